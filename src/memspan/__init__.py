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
from typing import TYPE_CHECKING, Any

from memspan.bootstrap import configure, shutdown
from memspan.compat.stormlog import PhaseBoundary, PhaseRecorder, PhaseToken
from memspan.config import ConfigError, MemspanConfig
from memspan.names import REPORT_SUFFIX
from memspan.oom import (
    OOMExceptionClassification,
    OOMFlightRecorder,
    OOMFlightRecorderConfig,
    classify_oom_exception,
)
from memspan.oom.service import capture_oom_block
from memspan.phases.core import PhaseCore
from memspan.phases.handle import PhaseHandle, PhaseProtocolError
from memspan.tracker import PhaseScope, Tracker, default_tracker_or_none, get_tracker
from memspan.version import __version__

if TYPE_CHECKING:  # the report package loads when a report is asked for, not at import
    from memspan.report.builder import ReportResult


def phase(name: str, /, trace_root: bool | None = None, **attributes: Any) -> PhaseScope:
    """A phase of the default tracker: ``with memspan.phase("step", step=3):`` or a decorator.

    The default tracker is looked up each time the phase opens, so a function decorated at
    import time joins the session that ``configure()`` starts later. ``trace_root=True``
    starts a trace of its own (names in ``MEMSPAN_TRACE_ROOTS`` do by default). While memspan
    is disabled (a configuration error) the block runs without a phase.
    """
    return PhaseScope(None, name, attributes, trace_root, core_of=_default_core)


def _default_core() -> PhaseCore | None:
    tracker = default_tracker_or_none()
    return tracker.phases if tracker is not None else None


def enter_phase(name: str, attributes: Mapping[str, Any] | None = None,
                trace_root: bool | None = None) -> PhaseHandle:
    """Open a phase of the default tracker now; close it through the returned handle."""
    tracker = default_tracker_or_none()
    if tracker is None:
        return PhaseHandle(scope_id="", name=str(name), path=(str(name),),
                           close_callback=lambda: None)
    return tracker.enter_phase(name, attributes, trace_root)


def capture_oom(
    context: str | None = None, metadata: Mapping[str, Any] | None = None
) -> AbstractContextManager[None]:
    """Dump and report an OOM raised in this block (for code outside phases); re-raises it."""
    tracker = default_tracker_or_none()
    return capture_oom_block(tracker.flight_recorder if tracker is not None else None,
                             context, metadata)


def generate_report(folder: str | None = None, suffix: str = REPORT_SUFFIX) -> ReportResult:
    """The HTML audit of the default tracker's session (``Tracker.generate_report``)."""
    tracker = default_tracker_or_none()
    if tracker is None:
        from memspan.report.builder import generate_report as build_without_session

        return build_without_session(folder, suffix)
    return tracker.generate_report(folder, suffix)


def __getattr__(name: str) -> Any:
    """``memspan.ReportResult`` without importing the report package at ``import memspan``."""
    if name == "ReportResult":
        from memspan.report.builder import ReportResult

        return ReportResult
    raise AttributeError(f"module 'memspan' has no attribute {name!r}")


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
    "ReportResult",
    "Tracker",
    "__version__",
    "capture_oom",
    "classify_oom_exception",
    "configure",
    "enter_phase",
    "generate_report",
    "get_tracker",
    "phase",
    "shutdown",
]
