"""Live leak detection: a ``memspan.leak.suspected`` event when a path starts leaking.

Listens to phase exits and feeds a :class:`~memspan.analysis.attribution.CycleAttribution`
(bounded memory), the same one the report builds from the spans; once a path has run
``min_runs`` times it is judged by the same rules as the report (with its ancestors, so a child
is blamed only inside a leaking parent); the first time a path is ``leaking`` the event goes on
that run's span, once per path.

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
from memspan.analysis.attribution import CycleAttribution, FinishedRun
from memspan.analysis.run_series import RunSeries
from memspan.analysis.thresholds import LeakThresholds
from memspan.analysis.verdicts import LEAKING, judge_with_ancestors, top_path
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
        self.attribution = CycleAttribution(max_paths=max_paths)
        self.flagged: set[str] = set()

    @property
    def max_paths(self) -> int:
        """At most this many paths are tracked (runs of further paths are counted)."""
        return self.attribution.max_paths

    @max_paths.setter
    def max_paths(self, value: int) -> None:
        self.attribution.max_paths = value

    @property
    def series(self) -> dict[str, RunSeries]:
        """Every tracked path's evidence so far."""
        return self.attribution.series

    def phase_ended(self, phase: PhaseSpan) -> None:
        figures = phase.exit
        if figures is None or figures.primary_start is None or figures.primary_end is None:
            return
        path = phase.path_text
        dropped = self.attribution.dropped_paths
        added = (figures.primary_peak - figures.primary_start
                 if figures.peak_exact is True and figures.primary_peak is not None else None)
        self.attribution.add(FinishedRun(path, figures.primary_start, figures.primary_end,
                                         added))
        if self.attribution.dropped_paths != dropped:
            self._ledger.add(LEAK_WATCH_PATHS)
            return
        series = self.series[path]
        limits = self.thresholds
        if series.n < limits.min_runs or path in self.flagged:
            return
        if series.n % VERDICT_EVERY and series.n != limits.min_runs:
            return  # the fit and the verdict's sentence: once every VERDICT_EVERY runs
        top = self.series[top_path(path, self.series, limits)]
        slope, r2 = top.level_fit()
        if slope < limits.slope_bytes_per_run or r2 < limits.min_r2 \
                or slope * (top.n - 1) < limits.growth_bytes:
            return  # cheap pre-checks: only a rising top path can make a leak below it
        verdict = judge_with_ancestors(path, self.series, limits)
        if verdict.verdict == LEAKING:
            self.flagged.add(path)
            phase.add_late_event(names.LEAK_EVENT, {
                names.LEAK_SLOPE: verdict.slope_bytes_per_run,
                names.LEAK_RUNS: verdict.runs,
                names.PHASE_PATH: path,
            })
