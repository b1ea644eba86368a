"""One configuration object with every setting, from keyword arguments or ``MEMSPAN_*``.

Invariants:

- Validation happens here, at the edge, once, by the declarations of
  :mod:`memspan.environment_variables` (type, valid range, default). A bad value raises
  :class:`ConfigError` whose message names the variable (or keyword) and the valid range;
  nothing downstream re-validates on the hot path.
- Directory settings are made absolute when the configuration is built, so a later
  ``os.chdir`` moves neither bundles nor output. A directory setting that names an existing
  file is refused here.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from memspan import environment_variables as ev
from memspan.environment_variables import ConfigError

__all__ = ["ConfigError", "MemspanConfig"]


def _default(variable: str) -> Any:
    return field(default=ev.variable(variable).default)


@dataclass(frozen=True)
class MemspanConfig:
    """Every memspan setting. Build it with :meth:`from_env` or keyword arguments.

    Each field is declared (range, default, doc) by the variable of the same setting in
    :mod:`memspan.environment_variables`; ``docs/configuration.md`` is generated from there.
    """

    sample_interval_s: float = _default(ev.MEMSPAN_SAMPLE_INTERVAL)
    nvml_interval_s: float = _default(ev.MEMSPAN_NVML_INTERVAL)
    export_interval_s: float = _default(ev.MEMSPAN_EXPORT_INTERVAL)
    output_dir: str = _default(ev.MEMSPAN_OUTPUT_DIR)
    output_max_mb: float = _default(ev.MEMSPAN_OUTPUT_MAX_MB)
    oom_enabled: bool = _default(ev.MEMSPAN_OOM_ENABLED)
    dump_dir: str = _default(ev.MEMSPAN_DUMP_DIR)
    buffer_size: int = _default(ev.MEMSPAN_BUFFER_SIZE)
    max_dumps: int = _default(ev.MEMSPAN_MAX_DUMPS)
    max_total_mb: int = _default(ev.MEMSPAN_MAX_TOTAL_MB)
    cuda_history: bool = _default(ev.MEMSPAN_CUDA_HISTORY)
    breadcrumbs: bool = _default(ev.MEMSPAN_BREADCRUMBS)
    auto_phases: bool = _default(ev.MEMSPAN_AUTO_PHASES)
    rss_metric: bool = _default(ev.MEMSPAN_RSS_METRIC)
    reports_dir: str = _default(ev.MEMSPAN_REPORTS_DIR)
    job_id: str | None = _default(ev.MEMSPAN_JOB_ID)
    quiet: bool = _default(ev.MEMSPAN_QUIET)
    span_mode: str = _default(ev.MEMSPAN_SPAN_MODE)
    trace_roots: str = _default(ev.MEMSPAN_TRACE_ROOTS)
    step_keep_every: int = _default(ev.MEMSPAN_STEP_KEEP_EVERY)
    step_keep_first: int = _default(ev.MEMSPAN_STEP_KEEP_FIRST)
    step_keep_retained_mb: float = _default(ev.MEMSPAN_STEP_KEEP_RETAINED_MB)
    step_peak_increase_mb: float = _default(ev.MEMSPAN_STEP_PEAK_INCREASE_MB)

    def __post_init__(self) -> None:
        declared = ev.settings()
        for item in dataclasses.fields(self):
            value = declared[item.name].check(getattr(self, item.name), item.name)
            object.__setattr__(self, item.name, value)

    @property
    def trace_root_names(self) -> frozenset[str]:
        """The phase names that start a trace (``trace_roots``, comma-separated)."""
        return frozenset(name.strip() for name in self.trace_roots.split(",") if name.strip())

    @property
    def output_max_bytes(self) -> int:
        """``output_max_mb`` in bytes (at least 1)."""
        return max(1, int(self.output_max_mb * 1024 * 1024))

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> MemspanConfig:
        """Read ``MEMSPAN_*`` variables; keyword ``overrides`` win over the environment."""
        declared = ev.settings()
        unknown = set(overrides) - set(declared)
        if unknown:
            raise ConfigError(
                f"unknown memspan setting(s): {', '.join(sorted(unknown))}; "
                f"accepted: {', '.join(sorted(declared))}"
            )
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting, variable in declared.items():
            if setting in overrides:
                continue
            value = ev.read(variable.name, env)
            if value is not None:
                values[setting] = value
        values.update(overrides)
        return cls(**values)

    def replace(self, **changes: Any) -> MemspanConfig:
        return dataclasses.replace(self, **changes)
