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
from contextlib import AbstractContextManager
from typing import Any

from memspan.bootstrap import configure, shutdown
from memspan.config import ConfigError, MemspanConfig
from memspan.oom import (
    OOMExceptionClassification,
    OOMFlightRecorder,
    OOMFlightRecorderConfig,
    classify_oom_exception,
)
from memspan.oom.service import capture_oom_block
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


def capture_oom(
    context: str | None = None, metadata: Mapping[str, Any] | None = None
) -> AbstractContextManager[None]:
    """Dump and report an OOM raised in this block (for code outside phases); re-raises it."""
    return capture_oom_block(get_tracker().flight_recorder, context, metadata)


__all__ = [
    "ConfigError",
    "MemspanConfig",
    "OOMExceptionClassification",
    "OOMFlightRecorder",
    "OOMFlightRecorderConfig",
    "PhaseBoundary",
    "PhaseHandle",
    "PhaseProtocolError",
    "PhaseRecorder",
    "PhaseScope",
    "PhaseToken",
    "Tracker",
    "__version__",
    "capture_oom",
    "classify_oom_exception",
    "configure",
    "enter_phase",
    "get_tracker",
    "phase",
    "shutdown",
]
