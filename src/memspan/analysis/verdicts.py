"""One function decides a phase path's verdict, one the page's badge: they cannot disagree.

Input: for each run of the path, the primary memory figure (allocated bytes on a GPU, RSS on
a host) at the run's start and end, and its peak when known. A run *keeps* ``end - start``
(signed: memory freed in a run counts against memory kept in another; RAM-FLOW clamped
deltas at zero and saw leaks in noise). The path *holds* after run k the sum of what runs
1..k kept, which charges a path only for its own runs, not for what other code did in between.
Its *working memory* is the most one run added at its peak (``peak - start``).

Verdicts (thresholds in :class:`LeakThresholds`, worked examples in docs/reports.md):

- ``insufficient data``: fewer than ``min_runs`` runs. Never shown as leak-free.
- *growing*: the held memory follows a line (least squares over the run index,
  R² >= ``min_r2``) rising at least ``slope_bytes_per_run`` per run, and the mean kept per
  run is ``min_drift_t`` standard errors above zero (noise is not growth).
- ``leaking``: growing, and the fitted growth over all runs reaches ``max(growth_bytes,
  growth_share * working memory)`` (a per-run threshold that falls with the run count and
  rises with the path's size). Growing but under that: ``insufficient data`` (more runs).
- ``plateau``: not growing, and the held memory is at least ``plateau_floor_bytes`` and at
  least ``plateau_share`` of the working memory (or ``plateau_bytes``; when no run had an
  exact peak, ``plateau_process_share`` of the process): acquired and never
  released. It is *critical* (the CRITICAL BLOAT alert) when what is held is at least
  ``critical_share`` of the working memory or ``critical_process_share`` of the process,
  however few MiB that is.
- ``leak-free``: judged, and neither.

Every verdict carries one sentence of evidence with the figures and the thresholds used.
:class:`RunSeries` keeps its sums incrementally (O(1) memory and time per run), so the same
code serves the live watcher and a report over a million spans.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from memspan.analysis.thresholds import LeakThresholds

INSUFFICIENT = "insufficient data"
LEAK_FREE = "leak-free"
PLATEAU = "plateau"
LEAKING = "leaking"

BADGES = {
    INSUFFICIENT: "INSUFFICIENT DATA",
    LEAK_FREE: "CERTIFIED LEAK-FREE",
    PLATEAU: "HIGH MEMORY PLATEAU",
    LEAKING: "LEAK SUSPECTED",
}
CRITICAL_BADGE = "HIGH MEMORY PLATEAU · CRITICAL BLOAT"
SEVERITY = {INSUFFICIENT: 0, LEAK_FREE: 1, PLATEAU: 2, LEAKING: 4}


def human_bytes(value: float | None) -> str:
    """``1.5 MiB``, ``-412.0 KiB``, ``12 B``; an en dash for unknown."""
    if value is None or not math.isfinite(value):
        return "\u2013"
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{sign}{value:.1f} {unit}" if unit != "B" else f"{sign}{value:.0f} B"
        value /= 1024
    return f"{sign}{value:.1f} TiB"  # pragma: no cover


@dataclass(frozen=True)
class Verdict:
    """A path's verdict and the figures behind it (``held_bytes`` is the one held figure)."""

    verdict: str
    badge: str
    critical: bool
    runs: int
    held_bytes: int
    slope_bytes_per_run: float
    growth_bytes: float
    r2: float
    working_bytes: int
    process_bytes: int | None
    growth_threshold_bytes: float
    evidence: str

    @property
    def severity(self) -> int:
        return SEVERITY[self.verdict] + (1 if self.critical else 0)


class RunSeries:
    """Incremental least squares over (run index, memory held by the path after the run)."""

    __slots__ = ("held", "kept_sq", "last_end", "n", "sx", "sxx", "sxy", "sy", "syy", "working",
                 "working_known")

    def __init__(self) -> None:
        self.n = 0
        self.sx = self.sy = self.sxx = self.sxy = self.syy = 0.0
        self.kept_sq = 0.0
        self.held = 0
        self.working = 0
        self.working_known = False
        self.last_end: int | None = None

    def add(self, start: int, end: int, peak: int | None = None,
            exact: bool | None = None) -> None:
        """One run. ``peak`` tells the working memory only when it is exact (the high-water
        mark rose inside the run) or its exactness is not known (``None``: a producer that does
        not say); an inexact peak (the highest reading seen) is only a lower bound."""
        kept = end - start
        self.held += kept
        self.kept_sq += float(kept) * float(kept)
        if peak is not None and exact is not False:
            self.working = max(self.working, peak - start)
            self.working_known = True
        self.working = max(self.working, kept)
        self.last_end = end
        x = float(self.n)
        y = float(self.held)
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
        r2 = (cov * cov) / (var_x * var_y) if var_y > 1e-9 * max(1.0, self.syy) else 0.0
        return slope, min(1.0, max(0.0, r2))

    def drift_t(self) -> float:
        """Mean kept per run in standard errors (a one-sample t statistic); inf if no spread."""
        n = self.n
        if n < 2:
            return 0.0
        mean = self.held / n
        variance = max(0.0, (self.kept_sq - n * mean * mean) / (n - 1))
        if variance <= 1e-9 * max(1.0, mean * mean):
            return math.inf if mean > 0 else 0.0
        return mean / math.sqrt(variance / n)


def verdict_for(series: RunSeries, thresholds: LeakThresholds | None = None) -> Verdict:
    """The verdict of one path (see the module docstring for the rules)."""
    t = thresholds or LeakThresholds()
    slope, r2 = series.fit()
    n, held, working = series.n, series.held, series.working
    growth = slope * max(0, n - 1)
    needed = max(float(t.growth_bytes), t.growth_share * working)
    per_run = max(t.slope_bytes_per_run, needed / max(1, n - 1))
    process = series.last_end
    growing = r2 >= t.min_r2 and slope >= t.slope_bytes_per_run \
        and series.drift_t() >= t.min_drift_t
    trend = f"{human_bytes(slope)}/run, R² {r2:.2f}"
    critical = False
    if n < t.min_runs:
        name = INSUFFICIENT
        evidence = (f"Ran {_runs(n)}; a verdict needs at least {t.min_runs} runs "
                    f"(so far it holds {human_bytes(held)}).")
    elif growing and growth >= needed and slope >= per_run:
        name = LEAKING
        evidence = (f"Grew {human_bytes(growth)} over {n} runs ({trend}); a leak is growth "
                    f"of at least {human_bytes(needed)} over the runs "
                    f"({human_bytes(per_run)}/run) with R² ≥ {t.min_r2:.2f}.")
    elif growing:
        name = INSUFFICIENT
        evidence = (f"Grows steadily ({trend}) but only {human_bytes(growth)} over {n} runs, "
                    f"under the {human_bytes(needed)} a leak needs: more runs are needed "
                    "for a verdict.")
    elif held >= t.plateau_floor_bytes and (
            (series.working_known and held >= t.plateau_share * working)
            or (not series.working_known and process is not None
                and held >= t.plateau_process_share * process)
            or held >= t.plateau_bytes):
        name = PLATEAU
        critical = (series.working_known and held >= t.critical_share * working) or (
            process is not None and process > 0 and held >= t.critical_process_share * process)
        rule = (f"plateau at ≥ {t.plateau_share:.0%} of the working memory (or "
                f"≥ {human_bytes(t.plateau_bytes)}), critical at ≥ {t.critical_share:.0%} of it "
                f"or ≥ {t.critical_process_share:.0%} of the process" if series.working_known
                else f"plateau at ≥ {t.plateau_process_share:.0%} of the process (or "
                     f"≥ {human_bytes(t.plateau_bytes)}), critical at "
                     f"≥ {t.critical_process_share:.0%} of it")
        evidence = (f"Holds {human_bytes(held)} after {n} runs, not growing ({trend}): "
                    f"{_against(series, held, process)}; "
                    f"{'critical bloat' if critical else 'a plateau'}: {rule}.")
    else:
        name = LEAK_FREE
        plateau = (f"≥ {t.plateau_share:.0%} of the working memory" if series.working_known
                   else f"≥ {t.plateau_process_share:.0%} of the process")
        evidence = (f"Holds {human_bytes(held)} after {n} runs ({trend}): "
                    f"{_against(series, held, process)}; under the leak threshold "
                    f"(≥ {human_bytes(needed)} over the runs, R² ≥ {t.min_r2:.2f}) and the "
                    f"plateau threshold ({plateau}).")
    badge = CRITICAL_BADGE if critical else BADGES[name]
    return Verdict(name, badge, critical, n, held, slope, growth, r2, working, process,
                   needed, evidence)


def _against(series: RunSeries, held: int, process: int | None) -> str:
    of_process = f"{_share(held, process)} of the {human_bytes(process)} process"
    if not series.working_known:
        return f"{of_process}, its working memory not known exactly (no exact peak)"
    return (f"{_share(held, series.working)} of its {human_bytes(series.working)} working "
            f"memory, {of_process}")


def _runs(n: int) -> str:
    return "once" if n == 1 else f"{n} times"


def _share(part: float, whole: float | None) -> str:
    if whole is None or whole <= 0:
        return "an unknown share"
    return f"{part / whole:.0%}"


@dataclass(frozen=True)
class Outcome:
    """How the run ended, as far as the input says (``memspan run``'s span, OOM events)."""

    exit_code: int | None = None
    signal_name: str | None = None
    oom: bool = False
    oom_confidence: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class PageBadge:
    """The page's one badge: ``key`` is a verdict name, ``failed`` or ``none``."""

    key: str
    text: str
    color: str
    sentence: str


BADGE_COLORS = {
    LEAKING: "#c62828", PLATEAU: "#ef6c00", LEAK_FREE: "#2e7d32", INSUFFICIENT: "#616161",
    "failed": "#b71c1c", "critical": "#c62828",
}


def page_badge(verdicts: list[Verdict], outcome: Outcome | None) -> PageBadge:
    """The badge of a report: how the run ended if badly, else the worst judged verdict.

    Green only when the run did not fail and at least one path was judged and every judged
    path is leak-free; a killed or failed run is always red and says what happened.
    """
    judged = [v for v in verdicts if v.verdict != INSUFFICIENT]
    worst = max(judged, key=lambda v: (v.severity, v.slope_bytes_per_run), default=None)
    if outcome is not None and (outcome.oom or (outcome.exit_code or 0) != 0):
        if outcome.signal_name:
            text = f"KILLED BY {outcome.signal_name}"
        elif outcome.exit_code:
            text = f"FAILED (EXIT {outcome.exit_code})"
        else:
            text = "OUT OF MEMORY"
        if outcome.oom and text != "OUT OF MEMORY":
            text += f" · OOM {(outcome.oom_confidence or 'possible').upper()}"
        tail = f" Phases: {worst.badge.lower()}." if worst is not None else ""
        reason = (outcome.reason or text.lower()).rstrip(".")
        return PageBadge("failed", text, BADGE_COLORS["failed"],
                         f"The job did not finish normally: {reason}." + tail)
    if worst is None:
        return PageBadge(INSUFFICIENT, BADGES[INSUFFICIENT], BADGE_COLORS[INSUFFICIENT],
                         "No phase path ran often enough for a verdict.")
    color = BADGE_COLORS["critical" if worst.critical else worst.verdict]
    return PageBadge(worst.verdict, worst.badge, color, worst.evidence)


def overall(verdicts: list[Verdict]) -> Verdict | None:
    """The worst judged verdict (``None`` when no path ran ``min_runs`` times)."""
    judged = [v for v in verdicts if v.verdict != INSUFFICIENT]
    return max(judged, key=lambda v: (v.severity, v.slope_bytes_per_run), default=None)
