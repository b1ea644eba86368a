"""``make bench``: run every benchmark script in this directory, each in its own process.

Each script prints its table and merges its rows into ``benchmarks/results.json``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main() -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if not p.name.startswith(("_", "run_all")))
    failed = []
    for script in scripts:
        result = subprocess.run([sys.executable, str(script)], cwd=HERE, check=False)
        if result.returncode != 0:
            failed.append(script.name)
    print(f"\nresults: {HERE / 'results.json'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
