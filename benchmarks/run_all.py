"""``make bench``: run every benchmark script in this directory, each in its own process.

Each script prints its table and merges its rows into ``benchmarks/results.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent


def print_combined() -> None:
    """One table of every row of every script (the ones just run)."""
    results = json.loads((HERE / "results.json").read_text()) if (HERE / "results.json").exists() else {}
    print("\n== all benchmarks ==")
    print(f"{'benchmark':<20}{'figure':<60}{'value':>14}  {'unit':<6}{'target':<16}{'ratio':>7}  met")
    for script, entry in results.items():
        for row in entry["rows"]:
            ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else ""
            met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
            print(f"{script:<20}{row['figure'][:58]:<60}{row['value']:>14.3f}  {row['unit']:<6}"
                  f"{row['target']:<16}{ratio:>7}  {met}")


def main() -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if not p.name.startswith(("_", "run_all")))
    failed = []
    for script in scripts:
        result = subprocess.run([sys.executable, str(script)], cwd=HERE, check=False)
        if result.returncode != 0:
            failed.append(script.name)
    print_combined()
    print(f"\nresults: {HERE / 'results.json'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
