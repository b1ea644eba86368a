"""memspan: ML memory in the observability stack you already run.

Phases are OpenTelemetry spans carrying the memory they started with, ended with and
peaked at; a background sampler turns allocator, NVML, host and cgroup memory into OTel
metrics; an OOM flight recorder leaves a dump bundle linked from the failing span.

    import memspan

    memspan.configure()
    with memspan.phase("train"):
        for step in range(steps):
            with memspan.phase("step", step=step):
                ...
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memspan.bootstrap import configure, shutdown
from memspan.config import ConfigError, MemspanConfig
from memspan.runtime import (
    PhaseBoundary,
    PhaseHandle,
    PhaseProtocolError,
    PhaseRecorder,
    PhaseToken,
)
from memspan.tracker import PhaseScope, Tracker, get_tracker
from memspan.version import __version__


def phase(name: str, /, **attributes: Any) -> PhaseScope:
    """A phase of the default tracker: ``with memspan.phase("step", step=3):`` or a decorator."""
    return get_tracker().phase(name, **attributes)


def enter_phase(name: str, attributes: Mapping[str, Any] | None = None) -> PhaseHandle:
    """Open a phase of the default tracker now; close it through the returned handle."""
    return get_tracker().enter_phase(name, attributes)


__all__ = [
    "ConfigError",
    "MemspanConfig",
    "PhaseBoundary",
    "PhaseHandle",
    "PhaseProtocolError",
    "PhaseRecorder",
    "PhaseScope",
    "PhaseToken",
    "Tracker",
    "__version__",
    "configure",
    "enter_phase",
    "get_tracker",
    "phase",
    "shutdown",
]
