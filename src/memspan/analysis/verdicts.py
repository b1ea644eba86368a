"""One function decides a phase path's verdict, one the page's badge: they cannot disagree.

Input: each path's :class:`~memspan.analysis.run_series.RunSeries`, fed by
:class:`~memspan.analysis.attribution.CycleAttribution`: the level (memory in use) at the end
of each run, and each run's *retained* bytes (how far it raised the retained baseline of its
parent's cycle, net of what its siblings and the next cycle release). A path *holds* the sum of
its runs' retained bytes, shown between 0 and the process's figure; its *working memory* is the
most one run added at its peak.

Order (worked examples in docs/reports.md; thresholds in :class:`LeakThresholds`):

- ``insufficient data``: fewer than ``min_runs`` runs. Never shown as leak-free.
- A *top* path (its parent path ran fewer than ``min_runs`` times, or it has none: usually
  ``step``) is ``leaking`` when, after warm-up (the first tenth of its runs), its end level
  rises along a line (R² >= ``min_r2``, at least ``slope_bytes_per_run`` per run, at least
  ``max(growth_bytes, growth_share * working memory)`` over the runs) and the rise is inside its
  own runs: what they retain per run is at least ``attribution_share`` of the slope and
  ``min_drift_t`` standard errors above zero (growth between its runs is some other code's).
- A path inside a repeated parent is ``leaking`` only when its parent is, and its runs retain
  at least ``attribution_share`` of what the parent's runs retain (the evidence says which
  share: how sure the attribution is). A child of a flat parent is never leaking.
- ``plateau``: not leaking, and it holds at least ``plateau_floor_bytes`` and
  ``plateau_process_floor_share`` of the process, and at least ``plateau_share`` of its working
  memory (``plateau_process_share`` of the process when no peak was exact), or
  ``plateau_bytes``: acquired and never released. *Critical* (the CRITICAL BLOAT alert) when
  it holds at least ``critical_process_share`` of the process and ``critical_share`` of its
  working memory (when known).
- ``leak-free``: judged, and neither.

Every verdict carries one sentence of evidence with the figures and the thresholds used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from memspan.analysis.attribution import PATH_SEPARATOR
from memspan.analysis.run_series import RunSeries
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
    retained_bytes_per_run: float = 0.0
    share_of_parent: float | None = None

    @property
    def severity(self) -> int:
        return SEVERITY[self.verdict] + (1 if self.critical else 0)


@dataclass(frozen=True)
class ParentContext:
    """What a path inside a repeated parent needs from it: its series and its verdict."""

    path: str
    series: RunSeries
    verdict: Verdict


def verdict_for(series: RunSeries, thresholds: LeakThresholds | None = None,
                parent: ParentContext | None = None) -> Verdict:
    """The verdict of one path (see the module docstring for the rules); ``parent`` is given
    for a path whose parent path ran at least ``min_runs`` times."""
    t = thresholds or LeakThresholds()
    slope, r2 = series.level_fit()
    rate, drift_t, judged = series.retained_after_warm_up()
    n, working = series.n, series.working
    process = series.last_end
    held = max(0, series.held)
    if process is not None and process > 0:
        held = min(held, process)
    growth = slope * max(0, judged - 1)
    needed = max(float(t.growth_bytes), t.growth_share * working)
    trend = f"end level {human_bytes(slope)}/run after warm-up, R² {r2:.2f}"
    kept = f"its runs retain {human_bytes(rate)}/run"
    critical = False
    share: float | None = None
    leaking = False
    if n < t.min_runs:
        name = INSUFFICIENT
        evidence = (f"Ran {_runs(n)}; a verdict needs at least {t.min_runs} runs "
                    f"(so far it holds {human_bytes(held)}).")
    elif parent is None:
        rising = r2 >= t.min_r2 and slope >= t.slope_bytes_per_run
        inside = rate >= t.attribution_share * slope and drift_t >= t.min_drift_t
        leaking = rising and inside and growth >= needed
        if leaking:
            name = LEAKING
            evidence = (f"Grew {human_bytes(growth)} over {judged} runs after warm-up ({trend}); "
                        f"{kept}, {_share(rate, slope)} of the rise; a leak is growth of at "
                        f"least {human_bytes(needed)} with R² ≥ {t.min_r2:.2f}, retained inside "
                        "the path's own runs.")
        elif rising and inside:
            name = INSUFFICIENT
            evidence = (f"Grows steadily ({trend}; {kept}) but only {human_bytes(growth)} over "
                        f"{judged} runs, under the {human_bytes(needed)} a leak needs: more runs "
                        "are needed for a verdict.")
        else:
            name = ""
            evidence = ""
    else:
        parent_rate, _, _ = parent.series.retained_after_warm_up()
        carried = rate * n / max(1, parent.series.n)
        share = carried / parent_rate if parent_rate > 0 else 0.0
        leaking = (parent.verdict.verdict == LEAKING and share >= t.attribution_share
                   and rate >= t.slope_bytes_per_run and drift_t >= t.min_drift_t)
        if leaking:
            name = LEAKING
            evidence = (f"Carries {share:.0%} of the growth of {parent.path}, which is leaking: "
                        f"{kept} after warm-up ({trend}); a child is blamed when it retains at "
                        f"least {t.attribution_share:.0%} of what its parent's runs retain.")
        else:
            name = ""
            evidence = ""
    if not name:
        name, critical, evidence = _plateau_or_clean(series, held, process, t, trend, kept,
                                                     parent, share)
    badge = CRITICAL_BADGE if critical else BADGES[name]
    return Verdict(name, badge, critical, n, held, slope, growth, r2, working, process,
                   needed, evidence, rate, share)


def _plateau_or_clean(series: RunSeries, held: int, process: int | None, t: LeakThresholds,
                      trend: str, kept: str, parent: ParentContext | None,
                      share: float | None) -> tuple[str, bool, str]:
    working = series.working
    of_process = process is not None and process > 0
    big_enough = held >= t.plateau_floor_bytes and (
        not of_process or held >= t.plateau_process_floor_share * (process or 0))
    against_path = (series.working_known and held >= t.plateau_share * working) or (
        not series.working_known and of_process
        and held >= t.plateau_process_share * (process or 0))
    context = ""
    if parent is not None and parent.verdict.verdict == LEAKING and share is not None:
        context = f" Its parent {parent.path} is leaking; this path carries {share:.0%} of it."
    released = (f" Its runs released {human_bytes(-series.held)} more than they kept."
                if series.held < 0 else "")
    if big_enough and (against_path or held >= t.plateau_bytes):
        critical = of_process and held >= t.critical_process_share * (process or 0) and (
            not series.working_known or held >= t.critical_share * working)
        rule = (f"a plateau holds ≥ {human_bytes(t.plateau_floor_bytes)} and "
                f"≥ {t.plateau_process_floor_share:.0%} of the process, and "
                + (f"≥ {t.plateau_share:.0%} of the working memory" if series.working_known
                   else f"≥ {t.plateau_process_share:.0%} of the process")
                + f" (or ≥ {human_bytes(t.plateau_bytes)}); critical at "
                  f"≥ {t.critical_process_share:.0%} of the process"
                + (f" and ≥ {t.critical_share:.0%} of the working memory"
                   if series.working_known else ""))
        evidence = (f"Holds {human_bytes(held)} after {series.n} runs, not growing ({trend}): "
                    f"{_against(series, held, process)}; "
                    f"{'critical bloat' if critical else 'a plateau'}: {rule}.{context}")
        return PLATEAU, critical, evidence
    evidence = (f"Holds {human_bytes(held)} after {series.n} runs ({trend}; {kept}): "
                f"{_against(series, held, process)}; under the leak threshold (growth of "
                f"≥ {human_bytes(max(float(t.growth_bytes), t.growth_share * working))} with "
                f"R² ≥ {t.min_r2:.2f}, retained inside its runs) and the plateau threshold."
                f"{released}{context}")
    return LEAK_FREE, False, evidence


def judge_paths(series: dict[str, RunSeries], thresholds: LeakThresholds | None = None
                ) -> dict[str, Verdict]:
    """Every path's verdict, outermost first, so each child sees its parent's verdict."""
    t = thresholds or LeakThresholds()
    verdicts: dict[str, Verdict] = {}
    for path in sorted(series, key=lambda p: (p.count(PATH_SEPARATOR), p)):
        verdicts[path] = verdict_for(series[path], t, parent_context(path, series, verdicts, t))
    return verdicts


def judge_with_ancestors(path: str, series: dict[str, RunSeries],
                         thresholds: LeakThresholds | None = None) -> Verdict:
    """One path's verdict, judging only it and its ancestors (as :func:`judge_paths` would)."""
    t = thresholds or LeakThresholds()
    verdicts: dict[str, Verdict] = {}
    for prefix in _ancestors_and_self(path):
        if prefix in series:
            verdicts[prefix] = verdict_for(series[prefix], t,
                                           parent_context(prefix, series, verdicts, t))
    return verdicts.get(path) or verdict_for(RunSeries(), t)


def top_path(path: str, series: dict[str, RunSeries], thresholds: LeakThresholds) -> str:
    """The path whose verdict decides whether ``path`` can leak: ``path`` itself, or the
    nearest ancestor judged as a top path (walking up while the parent ran ``min_runs`` times)."""
    while True:
        parent = path.rpartition(PATH_SEPARATOR)[0]
        parent_series = series.get(parent) if parent else None
        if parent_series is None or parent_series.n < thresholds.min_runs:
            return path
        path = parent


def _ancestors_and_self(path: str) -> list[str]:
    parts = path.split(PATH_SEPARATOR)
    return [PATH_SEPARATOR.join(parts[:i]) for i in range(1, len(parts) + 1)]


def parent_context(path: str, series: dict[str, RunSeries], verdicts: dict[str, Verdict],
                   t: LeakThresholds) -> ParentContext | None:
    """The parent a path is judged against: its parent path when that ran ``min_runs`` times
    and has a verdict; ``None`` for a top path."""
    parent = path.rpartition(PATH_SEPARATOR)[0]
    parent_series = series.get(parent) if parent else None
    if parent_series is None or parent_series.n < t.min_runs or parent not in verdicts:
        return None
    return ParentContext(parent, parent_series, verdicts[parent])


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
