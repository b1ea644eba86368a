"""One configuration object with every setting, from keyword arguments or ``MEMSPAN_*``.

Invariant: validation happens here, at the edge, once. A bad value raises
:class:`ConfigError` whose message names the variable (or keyword) and the accepted values;
nothing downstream re-validates on the hot path.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from memspan import environment_variables as ev


class ConfigError(ValueError):
    """A configuration value was not acceptable; the message names it."""


_SPAN_MODES = ("deferred", "sync", "sdk")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class MemspanConfig:
    """Every memspan setting. Build it with :meth:`from_env` or keyword arguments."""

    sample_interval_s: float = 0.1
    nvml_interval_s: float = 1.0
    export_interval_s: float = 5.0
    output_dir: str = "memspan-out"
    output_max_mb: float = 64.0
    oom_enabled: bool = True
    dump_dir: str = "oom_dumps"
    buffer_size: int = 10_000
    max_dumps: int = 5
    max_total_mb: int = 256
    cuda_history: bool = False
    breadcrumbs: bool = False
    auto_phases: bool = True
    rss_metric: bool = True
    reports_dir: str = ".memory_audits"
    job_id: str | None = None
    span_mode: str = "deferred"
    trace_roots: str = "step"
    step_keep_every: int = 1
    step_keep_first: int = 10
    step_keep_retained_mb: float = 64.0
    step_peak_increase_mb: float = 1.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            spec = _SPECS[field.name]
            spec.check(getattr(self, field.name), field.name)
        if self.span_mode not in _SPAN_MODES:
            raise ConfigError(f"span_mode={self.span_mode!r} ({ev.MEMSPAN_SPAN_MODE}) is not "
                              f"accepted; accepted: {', '.join(_SPAN_MODES)}")

    @property
    def trace_root_names(self) -> frozenset[str]:
        """The phase names that start a trace (``trace_roots``, comma-separated)."""
        return frozenset(name.strip() for name in self.trace_roots.split(",") if name.strip())

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> MemspanConfig:
        """Read ``MEMSPAN_*`` variables; keyword ``overrides`` win over the environment."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, spec in _SPECS.items():
            raw = env.get(spec.variable)
            if raw is not None and raw.strip() != "":
                values[name] = spec.parse(raw, spec.variable)
        unknown = set(overrides) - set(_SPECS)
        if unknown:
            raise ConfigError(
                f"unknown memspan setting(s): {', '.join(sorted(unknown))}; "
                f"accepted: {', '.join(sorted(_SPECS))}"
            )
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> MemspanConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class _Spec:
    variable: str
    kind: str  # "seconds", "int", "mb", "bool", "path", "text"
    minimum: float = 0.0

    def parse(self, raw: str, label: str) -> Any:
        text = raw.strip()
        if self.kind == "bool":
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ConfigError(
                f"{label}={raw!r} is not a boolean; accepted: true/false, 1/0, yes/no, on/off"
            )
        if self.kind in ("seconds", "mb"):
            try:
                value: Any = float(text)
            except ValueError:
                raise ConfigError(f"{label}={raw!r} is not a number; {self.accepted()}") from None
            self.check(value, label)
            return value
        if self.kind == "int":
            try:
                value = int(text)
            except ValueError:
                raise ConfigError(f"{label}={raw!r} is not an integer; {self.accepted()}") from None
            self.check(value, label)
            return value
        return text

    def accepted(self) -> str:
        if self.kind == "seconds":
            return f"accepted: a number of seconds > {self.minimum:g}"
        if self.kind == "mb":
            return f"accepted: a number of MiB > {self.minimum:g}"
        if self.kind == "int":
            return f"accepted: an integer >= {self.minimum:g}"
        if self.kind == "path":
            return "accepted: a non-empty directory path"
        return "accepted: true/false"

    def check(self, value: Any, label: str) -> None:
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{label}={value!r} is not a boolean; accepted: True or False")
            return
        if self.kind in ("seconds", "mb"):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
                value > self.minimum and value == value and value != float("inf")
            )
            if not ok:
                raise ConfigError(f"{label}={value!r} is out of range; {self.accepted()}")
            return
        if self.kind == "int":
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= self.minimum
            if not ok:
                raise ConfigError(f"{label}={value!r} is out of range; {self.accepted()}")
            return
        if self.kind == "path" and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{label}={value!r} is not usable; {self.accepted()}")
        if self.kind == "text" and value is not None and not isinstance(value, str):
            raise ConfigError(f"{label}={value!r} must be a string")


_SPECS: dict[str, _Spec] = {
    "sample_interval_s": _Spec(ev.MEMSPAN_SAMPLE_INTERVAL, "seconds", 0.0),
    "nvml_interval_s": _Spec(ev.MEMSPAN_NVML_INTERVAL, "seconds", 0.0),
    "export_interval_s": _Spec(ev.MEMSPAN_EXPORT_INTERVAL, "seconds", 0.0),
    "output_dir": _Spec(ev.MEMSPAN_OUTPUT_DIR, "path"),
    "output_max_mb": _Spec(ev.MEMSPAN_OUTPUT_MAX_MB, "mb", 0.0),
    "oom_enabled": _Spec(ev.MEMSPAN_OOM_ENABLED, "bool"),
    "dump_dir": _Spec(ev.MEMSPAN_DUMP_DIR, "path"),
    "buffer_size": _Spec(ev.MEMSPAN_BUFFER_SIZE, "int", 1),
    "max_dumps": _Spec(ev.MEMSPAN_MAX_DUMPS, "int", 1),
    "max_total_mb": _Spec(ev.MEMSPAN_MAX_TOTAL_MB, "int", 1),
    "cuda_history": _Spec(ev.MEMSPAN_CUDA_HISTORY, "bool"),
    "breadcrumbs": _Spec(ev.MEMSPAN_BREADCRUMBS, "bool"),
    "auto_phases": _Spec(ev.MEMSPAN_AUTO_PHASES, "bool"),
    "rss_metric": _Spec(ev.MEMSPAN_RSS_METRIC, "bool"),
    "reports_dir": _Spec(ev.MEMSPAN_REPORTS_DIR, "path"),
    "job_id": _Spec(ev.MEMSPAN_JOB_ID, "text"),
    "span_mode": _Spec(ev.MEMSPAN_SPAN_MODE, "text"),
    "trace_roots": _Spec(ev.MEMSPAN_TRACE_ROOTS, "text"),
    "step_keep_every": _Spec(ev.MEMSPAN_STEP_KEEP_EVERY, "int", 1),
    "step_keep_first": _Spec(ev.MEMSPAN_STEP_KEEP_FIRST, "int", 0),
    "step_keep_retained_mb": _Spec(ev.MEMSPAN_STEP_KEEP_RETAINED_MB, "mb", 0.0),
    "step_peak_increase_mb": _Spec(ev.MEMSPAN_STEP_PEAK_INCREASE_MB, "mb", 0.0),
}
