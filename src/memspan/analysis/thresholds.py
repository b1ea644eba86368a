"""The thresholds behind the verdicts, in one object, with validated overrides.

A bad ``MEMSPAN_LEAK_*``/``MEMSPAN_PLATEAU_*`` value is a :class:`~memspan.config.ConfigError`
naming the variable and the accepted values: never a crash at import. Four thresholds have a
variable; the others are set in code (``configure(leak_thresholds=LeakThresholds(...))``).
docs/reports.md explains each rule with a worked example.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

from memspan import environment_variables as ev
from memspan.config import ConfigError

KIB = 1 << 10
MIB = 1 << 20



@dataclass(frozen=True)
class LeakThresholds:
    """When a phase path is leaking, on a plateau, leak-free, or not judged yet.

    *Held* is what a path's runs retained in all (each run: how far it raised the retained
    baseline of its parent's cycle); *working memory* is the most one run of the path added at
    its peak (``peak - start``); *process* is the process's (or device's) figure after the last
    run. Growth is judged after warm-up (the first tenth of the runs).

    - ``min_runs``: runs of a path needed for any verdict (else ``insufficient data``).
    - leaking (a top path, usually ``step``): the end level grows along a line (R² >=
      ``min_r2``), at least ``slope_bytes_per_run`` per run (page-sized noise is never a leak)
      and ``max(growth_bytes, growth_share * working memory)`` over the runs (so the slope
      needed falls as the run count grows and rises with the path's size), and the path's runs
      retain at least ``attribution_share`` of that slope, ``min_drift_t`` standard errors
      above zero (growth between its runs, or a random walk of noise, is not its leak).
    - leaking (a path inside a repeated parent): the parent is leaking and this path's runs
      retain at least ``attribution_share`` of what the parent's retain.
    - plateau: not leaking, held >= ``plateau_floor_bytes`` and >= ``plateau_process_floor_share``
      of the process, and (held >= ``plateau_share`` of the working memory, or, when no run had
      an exact peak, >= ``plateau_process_share`` of the process; or held >= ``plateau_bytes``).
    - critical bloat (a plateau raised to an alert): held >= ``critical_process_share`` of the
      process and >= ``critical_share`` of the working memory (when known).
    """

    min_runs: int = 5
    min_r2: float = 0.8
    slope_bytes_per_run: float = 16 * KIB
    growth_bytes: int = 4 * MIB
    growth_share: float = 0.1
    min_drift_t: float = 3.0
    attribution_share: float = 0.5
    plateau_floor_bytes: int = 1 * MIB
    plateau_process_floor_share: float = 0.01
    plateau_share: float = 0.8
    plateau_process_share: float = 0.1
    plateau_bytes: int = 64 * MIB
    critical_share: float = 0.9
    critical_process_share: float = 0.1

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            accepted = _ACCEPTED[item.name]
            kind_ok = isinstance(value, int) and not isinstance(value, bool) if item.type == "int" \
                else isinstance(value, (int, float)) and not isinstance(value, bool)
            if not kind_ok or not math.isfinite(value) or not _IN_RANGE[item.name](value):
                raise ConfigError(f"{item.name}={value!r} is out of range; accepted: {accepted}")

    def describe(self) -> list[tuple[str, str, str]]:
        """(name, value, rule) rows for the report's thresholds table."""
        return [(item.name, _show(item.name, getattr(self, item.name)), _RULES[item.name])
                for item in fields(self)]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> LeakThresholds:
        """The defaults, with ``MEMSPAN_LEAK_*``/``MEMSPAN_PLATEAU_BYTES`` where set (parsed and
        range-checked by their declarations in :mod:`memspan.environment_variables`)."""
        return cls(**ev.leak_threshold_values(environ))  # type: ignore[arg-type]


def _show(name: str, value: float) -> str:
    if name.endswith("bytes") or name.endswith("bytes_per_run"):
        for unit, size in (("MiB", MIB), ("KiB", KIB)):
            if value >= size:
                return f"{value / size:g} {unit}"
        return f"{value:g} B"
    if name.endswith("share"):
        return f"{value * 100:g}%"
    return f"{value:g}"


_BYTES = "a number of bytes > 0 (finite)"
_SHARE = "a number in (0, 1]"
_ACCEPTED = {
    "min_runs": "an integer >= 3",
    "min_r2": "a number in [0, 1]",
    "slope_bytes_per_run": _BYTES,
    "growth_bytes": "an integer number of bytes > 0",
    "growth_share": "a number in [0, 10]",
    "min_drift_t": "a number >= 0",
    "attribution_share": _SHARE,
    "plateau_floor_bytes": "an integer number of bytes > 0",
    "plateau_process_floor_share": _SHARE,
    "plateau_share": _SHARE,
    "plateau_process_share": _SHARE,
    "plateau_bytes": "an integer number of bytes > 0",
    "critical_share": _SHARE,
    "critical_process_share": _SHARE,
}
_IN_RANGE = {
    "min_runs": lambda v: v >= 3,
    "min_r2": lambda v: 0.0 <= v <= 1.0,
    "slope_bytes_per_run": lambda v: v > 0,
    "growth_bytes": lambda v: v > 0,
    "growth_share": lambda v: 0.0 <= v <= 10.0,
    "min_drift_t": lambda v: v >= 0,
    "attribution_share": lambda v: 0.0 < v <= 1.0,
    "plateau_floor_bytes": lambda v: v > 0,
    "plateau_process_floor_share": lambda v: 0.0 < v <= 1.0,
    "plateau_share": lambda v: 0.0 < v <= 1.0,
    "plateau_process_share": lambda v: 0.0 < v <= 1.0,
    "plateau_bytes": lambda v: v > 0,
    "critical_share": lambda v: 0.0 < v <= 1.0,
    "critical_process_share": lambda v: 0.0 < v <= 1.0,
}
_RULES = {
    "min_runs": f"runs needed for any verdict ({ev.MEMSPAN_LEAK_MIN_RUNS})",
    "min_r2": f"leak: the held memory follows a line this well ({ev.MEMSPAN_LEAK_MIN_R2})",
    "slope_bytes_per_run": f"leak: at least this growth per run ({ev.MEMSPAN_LEAK_SLOPE_BYTES})",
    "growth_bytes": "leak: fitted growth after warm-up at least this...",
    "growth_share": "...and at least this share of the path's working memory",
    "min_drift_t": "leak: mean retained per run this many standard errors above zero",
    "attribution_share": "leak: a path's runs retain this share of the rise (of a top path's "
                         "end level, or of what its leaking parent's runs retain)",
    "plateau_floor_bytes": "plateau: held at least this...",
    "plateau_process_floor_share": "...and this share of the process...",
    "plateau_share": "...and this share of the working memory (or plateau_bytes)",
    "plateau_process_share": "...or, no run having an exact peak, this share of the process",
    "plateau_bytes": f"plateau: held at least this, whatever the share ({ev.MEMSPAN_PLATEAU_BYTES})",
    "critical_share": "critical bloat: held at least this share of the working memory...",
    "critical_process_share": "...and this share of the process's memory",
}
