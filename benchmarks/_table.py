"""Shared by the benchmark scripts: measure side by side, print one table, save the rows.

Ratios are what we claim (the machine is shared and noisy); absolute times are informational.
Each script's rows are merged into ``benchmarks/results.json`` under the script's name.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(__file__).with_name("results.json")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


@dataclass
class Row:
    figure: str
    value: float
    unit: str
    target: str = ""
    ratio: float | None = None
    met: bool | None = None


def per_call_us(function: Callable[[int], None], calls: int) -> float:
    started = time.perf_counter()
    function(calls)
    return (time.perf_counter() - started) / calls * 1e6


def interleaved_median(functions: dict[str, Callable[[int], None]], calls: int,
                       rounds: int = 7) -> dict[str, float]:
    """Median µs per call of each function, measured in alternating rounds."""
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():  # warm-up
        function(max(1, calls // 10))
    for _ in range(rounds):
        for name, function in functions.items():
            samples[name].append(per_call_us(function, calls))
    return {name: statistics.median(values) for name, values in samples.items()}


def report(script: str, rows: list[Row]) -> None:
    width = max(len(r.figure) for r in rows) + 2
    print(f"\n== {script} ==")
    print(f"{'figure':<{width}}{'value':>14}  {'unit':<8}{'target':<14}{'ratio':>8}  met")
    for row in rows:
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else ""
        met = "" if row.met is None else ("yes" if row.met else "NO")
        print(f"{row.figure:<{width}}{row.value:>14.3f}  {row.unit:<8}{row.target:<14}{ratio:>8}  {met}")
    existing = {}
    if RESULTS.exists():
        try:
            existing = json.loads(RESULTS.read_text())
        except json.JSONDecodeError:
            existing = {}
    existing[script] = {"rows": [asdict(r) for r in rows], "cpu_count": os.cpu_count(),
                        "python": sys.version.split()[0]}
    RESULTS.write_text(json.dumps(existing, indent=2))
