"""One function decides a phase path's verdict, so a badge and a verdict can never disagree.

Input: for each run of the path, the primary memory figure (allocated bytes on a GPU, RSS on
a host) at the run's start and end. A run *retains* ``end - start`` (signed: memory freed in a
run counts against memory kept in another; RAM-FLOW clamped deltas at zero and saw leaks in
noise). The path's *held* memory after run k is the sum of what runs 1..k retained, which
charges a path only for its own runs, not for what other code did in between.

- ``leaking``: at least ``min_runs`` runs, the least-squares slope of the held memory over the
  run index is at least ``slope_bytes_per_run``, and the line fits (R² >= ``min_r2``).
- ``plateau``: not leaking, but the held memory after the last run is at least
  ``plateau_bytes``: allocated once and kept.
- ``leak-free``: everything else (including paths run fewer than ``min_runs`` times).

:class:`RunSeries` keeps the least-squares sums incrementally (O(1) memory and time per run),
so the same code serves the live watcher and a report over a million spans.
"""

from __future__ import annotations

from dataclasses import dataclass

from memspan.analysis.thresholds import LeakThresholds

LEAK_FREE = "leak-free"
PLATEAU = "plateau"
LEAKING = "leaking"

BADGES = {
    LEAK_FREE: "CERTIFIED LEAK-FREE",
    PLATEAU: "HIGH MEMORY PLATEAU",
    LEAKING: "LEAK SUSPECTED",
}
SEVERITY = {LEAK_FREE: 0, PLATEAU: 1, LEAKING: 2}


@dataclass(frozen=True)
class Verdict:
    verdict: str
    badge: str
    runs: int
    slope_bytes_per_run: float
    r2: float
    held_bytes: int
    retained_total: int


class RunSeries:
    """Incremental least squares over (run index, memory held by the path after the run)."""

    __slots__ = ("n", "retained_total", "sx", "sxx", "sxy", "sy", "syy")

    def __init__(self) -> None:
        self.n = 0
        self.sx = self.sy = self.sxx = self.sxy = self.syy = 0.0
        self.retained_total = 0

    def add(self, start: int, end: int) -> None:
        self.retained_total += end - start
        x = float(self.n)
        y = float(self.retained_total)
        self.n += 1
        self.sx += x
        self.sy += y
        self.sxx += x * x
        self.sxy += x * y
        self.syy += y * y

    def fit(self) -> tuple[float, float]:
        """(slope in bytes per run, R²) of the held memory; (0, 0) with < 2 runs."""
        n = self.n
        if n < 2:
            return 0.0, 0.0
        var_x = self.sxx - self.sx * self.sx / n
        var_y = self.syy - self.sy * self.sy / n
        cov = self.sxy - self.sx * self.sy / n
        if var_x <= 0:
            return 0.0, 0.0
        slope = cov / var_x
        r2 = (cov * cov) / (var_x * var_y) if var_y > 0 else 0.0
        return slope, min(1.0, max(0.0, r2))


def verdict_for(series: RunSeries, thresholds: LeakThresholds | None = None) -> Verdict:
    """The verdict of one path (see the module docstring for the rules)."""
    limits = thresholds or LeakThresholds()
    slope, r2 = series.fit()
    held = series.retained_total
    if series.n >= limits.min_runs and slope >= limits.slope_bytes_per_run and r2 >= limits.min_r2:
        name = LEAKING
    elif series.n >= limits.min_runs and held >= limits.plateau_bytes:
        name = PLATEAU
    else:
        name = LEAK_FREE
    return Verdict(name, BADGES[name], series.n, slope, r2, held, series.retained_total)


def overall(verdicts: list[Verdict]) -> Verdict | None:
    """The worst verdict of a run (the report's badge)."""
    if not verdicts:
        return None
    return max(verdicts, key=lambda v: (SEVERITY[v.verdict], v.slope_bytes_per_run))
