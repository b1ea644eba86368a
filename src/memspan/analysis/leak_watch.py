"""Live leak detection: a ``memspan.leak.suspected`` event when a path starts leaking.

Listens to phase exits. Per phase path it keeps a :class:`RunSeries` (constant memory) and,
once the path has run ``min_runs`` times, applies the same verdict function as the report;
the first time a path is ``leaking`` the event goes on that run's span, once per path.

A path is judged at its ``min_runs``-th run and then every :data:`VERDICT_EVERY` runs (the
event can come that many runs after the verdict would first have said leaking; the sums are
updated at every run, so the verdict is the same).

Bounded: at most ``max_paths`` paths are tracked; runs of further paths are counted as
dropped (``leak_watch_paths``). Phase paths are bounded by code anyway (no step numbers in
names), so the bound only bites on misuse.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memspan import names
from memspan.analysis.thresholds import LeakThresholds
from memspan.analysis.verdicts import LEAKING, RunSeries, verdict_for
from memspan.drops import LEAK_WATCH_PATHS, DropLedger

if TYPE_CHECKING:
    from memspan.phases.record import PhaseSpan

#: runs of a path between two judgements of it
VERDICT_EVERY = 8


class LeakWatcher:
    """Listens to finished phases on the export worker (before their spans are built)."""

    def __init__(self, ledger: DropLedger, thresholds: LeakThresholds,
                 max_paths: int = 1024) -> None:
        self._ledger = ledger
        self.thresholds = thresholds
        self.max_paths = max_paths
        self.series: dict[str, RunSeries] = {}
        self.flagged: set[str] = set()

    def phase_ended(self, phase: PhaseSpan) -> None:
        figures = phase.exit
        if figures is None or figures.primary_start is None or figures.primary_end is None:
            return
        path = phase.path_text
        series = self.series.get(path)
        if series is None:
            if len(self.series) >= self.max_paths:
                self._ledger.add(LEAK_WATCH_PATHS)
                return
            series = self.series[path] = RunSeries()
        series.add(figures.primary_start, figures.primary_end, figures.primary_peak,
                   figures.peak_exact is True)
        if series.n < self.thresholds.min_runs or path in self.flagged:
            return
        if series.n % VERDICT_EVERY and series.n != self.thresholds.min_runs:
            return  # the fit and the verdict's sentence: once every VERDICT_EVERY runs
        slope, r2 = series.fit()
        limits = self.thresholds
        if slope < limits.slope_bytes_per_run or r2 < limits.min_r2 \
                or slope * (series.n - 1) < limits.growth_bytes:
            return  # cheap pre-checks: the verdict (and its sentence) only for likely leaks
        verdict = verdict_for(series, self.thresholds)
        if verdict.verdict == LEAKING:
            self.flagged.add(path)
            phase.add_late_event(names.LEAK_EVENT, {
                names.LEAK_SLOPE: verdict.slope_bytes_per_run,
                names.LEAK_RUNS: verdict.runs,
                names.PHASE_PATH: path,
            })
