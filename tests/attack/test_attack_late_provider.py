"""A global TracerProvider installed after memspan's default tracker was created."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

SCRIPT = Path(__file__).parent / "scripts" / "provider_set_after_first_phase.py"


def test_phases_reach_a_provider_installed_after_the_first_phase_at_exit(tmp_path: Path) -> None:
    """``@memspan.phase`` at import creates the default tracker on the proxy provider; the app
    then installs its TracerProvider. At exit the provider's own atexit shutdown runs first and
    memspan's flush hook was never placed on it, so every phase still pending is lost
    ("Processor is already shutdown"): here no phase span at all is exported."""
    out = tmp_path / "spans.txt"
    env = dict(os.environ, MEMSPAN_QUIET="true", MEMSPAN_OUTPUT_DIR=str(tmp_path / "out"),
               MEMSPAN_DUMP_DIR=str(tmp_path / "dumps"))
    done = subprocess.run([sys.executable, str(SCRIPT), str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    names = Counter(out.read_text().split()) if out.exists() else Counter()
    assert names == Counter({"load": 1, "train": 1, "step": 3}), (names, done.stderr[-500:])
