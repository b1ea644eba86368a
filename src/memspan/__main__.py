"""``python -m memspan`` is the ``memspan`` command."""

import sys

from memspan.cli import main

sys.exit(main())
