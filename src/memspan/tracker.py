"""The tracker: one session of phases, sources, sampler and instruments.

A :class:`Tracker` owns everything a process needs to report memory: the phase recorder,
the sources and their sampler thread, the observable instruments, and the phase histograms.
Most programs use the default tracker through :func:`memspan.phase` and
:func:`memspan.configure`; programs that want several sessions create their own.

Invariants:

- Each phase is one OTel span (kind INTERNAL) started in the caller's context, made current
  for the phase's duration, and ended exactly once.
- A user exception leaving a phase propagates unchanged; the span records it once as the
  semconv ``exception`` event with status ERROR. A protocol error found while unwinding is
  logged and counted, never raised over the user's exception.
- Histograms are recorded for every phase in the phase span's context (off the hot path, see
  :mod:`memspan.phase_metrics`), so their exemplars carry the span's trace and span ids.
- Telemetry failures never break the program: listeners that raise are counted and ignored.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar, cast

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from memspan import names
from memspan.analysis.leak_watch import LeakWatcher
from memspan.analysis.thresholds import LeakThresholds
from memspan.attributes import clean_attributes
from memspan.boundary import BoundaryReader, EntryFigures, ExitFigures
from memspan.config import MemspanConfig
from memspan.drops import CALLBACK_ERROR, PROTOCOL_ERROR, DropLedger
from memspan.instruments import MemoryInstruments
from memspan.oom.service import FlightRecorderService
from memspan.phase_metrics import PhaseHistograms
from memspan.resource import detected_rank
from memspan.runtime import OpenScope, PhaseHandle, PhaseProtocolError, PhaseRecorder
from memspan.sampling.sampler import Sampler
from memspan.sources.base import MemorySource
from memspan.sources.cgroup import CgroupMemorySource
from memspan.sources.host import HostMemorySource
from memspan.sources.nvml import NvmlSource
from memspan.sources.torch_allocator import TorchAllocatorSource
from memspan.version import __version__

_logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

_BYTE_BUCKETS = tuple(float(1 << k) for k in range(20, 41))  # 1 MiB .. 1 TiB
_SECOND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_NOT_ERRORS = (GeneratorExit, StopIteration, StopAsyncIteration)


class LivePhase:
    """An open phase as the tracker sees it: its scope, span, entry figures and times."""

    __slots__ = ("end_ns", "entry", "exit_figures", "scope", "span", "start_ns")

    def __init__(self, scope: OpenScope, span: trace.Span, entry: EntryFigures,
                 start_ns: int) -> None:
        self.scope = scope
        self.span = span
        self.entry = entry
        self.start_ns = start_ns
        self.end_ns = start_ns
        self.exit_figures: ExitFigures | None = None


class PhaseListener(Protocol):
    """Told about every phase boundary (the flight recorder's ring buffer listens)."""

    def phase_opened(self, phase: LivePhase) -> None: ...

    def phase_closed(self, phase: LivePhase, error: BaseException | None) -> None: ...


OOMHandler = Callable[[LivePhase, BaseException], None]


def default_sources() -> list[MemorySource]:
    """Host, cgroup, torch allocator and NVML: each degrades to nothing when absent."""
    return [HostMemorySource(), CgroupMemorySource(), TorchAllocatorSource(), NvmlSource()]


class Tracker:
    """Phases, memory sources, the sampler and the instruments of one session."""

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
        config: MemspanConfig | None = None,
        sources: Sequence[MemorySource] | None = None,
        rank: int | None = None,
        session_id: str | None = None,
        start_sampler: bool = True,
        ledger: DropLedger | None = None,
        install_excepthooks: bool = False,
        leak_thresholds: LeakThresholds | None = None,
    ) -> None:
        self.config = config if config is not None else MemspanConfig()
        self.session_id = session_id or str(uuid.uuid4())
        self.rank = detected_rank() if rank is None else rank
        self.ledger = ledger if ledger is not None else DropLedger()
        self._tracer = trace.get_tracer(
            names.INSTRUMENTATION_NAME, __version__, tracer_provider,
            schema_url=names.SCHEMA_URL,
        )
        meter = metrics.get_meter(
            names.INSTRUMENTATION_NAME, __version__, meter_provider,
            schema_url=names.SCHEMA_URL,
        )
        self._duration = meter.create_histogram(
            names.PHASE_DURATION, unit="s", description="Duration of a phase",
            explicit_bucket_boundaries_advisory=_SECOND_BUCKETS,
        )
        self._peak = meter.create_histogram(
            names.PHASE_MEMORY_PEAK, unit="By",
            description="Peak memory of a phase (allocator on a GPU, RSS on a host)",
            explicit_bucket_boundaries_advisory=_BYTE_BUCKETS,
        )
        self.phase_histograms = PhaseHistograms(self._duration, self._peak)
        self.oom_counter = meter.create_counter(
            names.OOM_COUNT, unit="1", description="Out-of-memory errors seen by memspan"
        )
        self.sources = list(sources) if sources is not None else default_sources()
        self.sampler = Sampler(
            self.sources,
            interval_s=self.config.sample_interval_s,
            slow_interval_s=self.config.nvml_interval_s,
            ledger=self.ledger,
        )
        self.instruments = MemoryInstruments(
            meter, lambda: self.sampler.state, self.ledger, emit_rss=self.config.rss_metric,
            before_collect=self.phase_histograms.drain,
        )
        self.sampler.add_listener(self._drain_histograms)
        host = self.source(HostMemorySource)
        self.torch_source = self.source(TorchAllocatorSource)
        self._boundary = BoundaryReader(host, self.torch_source, self.sampler, self.ledger)
        self.recorder = PhaseRecorder()
        self.listeners: list[PhaseListener] = []
        self.oom_handler: OOMHandler | None = None
        self._closed = False
        self.flight_recorder = FlightRecorderService(self)
        self.leak_watch = LeakWatcher(
            self, leak_thresholds if leak_thresholds is not None else LeakThresholds.from_env()
        )
        self.listeners.append(self.leak_watch)
        if install_excepthooks:
            self.flight_recorder.install_excepthooks()
        if start_sampler:
            self.sampler.start()

    def _drain_histograms(self, _readings: object, _increases: object) -> None:
        self.phase_histograms.drain()

    _S = TypeVar("_S")

    def source(self, kind: type[_S]) -> _S | None:
        """The first source of the given class, if this tracker has one."""
        for source in self.sources:
            if isinstance(source, kind):
                return source
        return None

    # -- public phase API --------------------------------------------------------------------
    def phase(self, name: str, /, **attributes: Any) -> PhaseScope:
        """A phase as a context manager or as a decorator of sync and async functions."""
        return PhaseScope(self, name, attributes)

    def enter_phase(self, name: str, attributes: Mapping[str, Any] | None = None) -> PhaseHandle:
        """Open a phase now; close it with the returned handle (or use it in ``with``)."""
        live = self.open_phase(name, attributes)
        return PhaseHandle(
            scope_id=live.scope.scope_id,
            name=live.scope.name,
            path=live.scope.path,
            close_callback=lambda: self.close_phase(live, None),
            fail_callback=lambda exc: self.close_phase(live, exc),
        )

    def current_phase_path(self) -> str | None:
        """The path of the innermost phase open in the current context."""
        scope = self.recorder.current()
        return scope.path_text if scope is not None else None

    # -- the hot path ------------------------------------------------------------------------
    def open_phase(self, name: str, attributes: Mapping[str, Any] | None) -> LivePhase:
        user_attributes = clean_attributes(attributes, self.ledger) if attributes else None
        entry = self._boundary.entry()
        start_ns = time.time_ns()

        def make_span(scope: OpenScope) -> trace.Span:
            if user_attributes:
                scope.attributes = user_attributes
            span_attributes: dict[str, Any] = {
                names.PHASE_NAME: scope.name,
                names.PHASE_PATH: scope.path_text,
                names.PHASE_DEPTH: scope.depth,
                names.PHASE_SCOPE_ID: scope.scope_id,
                names.SESSION_ID: scope.session_id,
                names.THREAD_ID: scope.thread_id,
                names.THREAD_NAME: scope.thread.name,
            }
            if scope.parent is not None:
                span_attributes[names.PHASE_PARENT_SCOPE_ID] = scope.parent.scope_id
            BoundaryReader.entry_attributes(entry, span_attributes)
            if user_attributes:
                span_attributes.update(user_attributes)
            return self._tracer.start_span(
                scope.name, kind=SpanKind.INTERNAL, attributes=span_attributes,
                start_time=start_ns,
            )

        scope = self.recorder.open_scope(
            session_id=self.session_id, rank=self.rank, name=name, make_span=make_span
        )
        assert scope.span is not None  # open_scope started it through make_span
        live = LivePhase(scope, scope.span, entry, start_ns)
        for listener in self.listeners:
            try:
                listener.phase_opened(live)
            except Exception:
                self.ledger.add(CALLBACK_ERROR, warning="a phase listener raised; ignored")
        return live

    def close_phase(self, live: LivePhase, error: BaseException | None) -> None:
        """Close ``live``; with ``error`` the phase is unwinding because of it."""
        scope = live.scope
        if error is None:
            self.recorder.close_scope(scope)  # raises PhaseProtocolError with no state change
        else:
            already_closed = scope.closed
            try:
                self.recorder.close_scope(scope, unwinding=True)
            except PhaseProtocolError as protocol_error:
                self.ledger.add(PROTOCOL_ERROR)
                _logger.warning("memspan: while an exception unwound a phase: %s", protocol_error)
                if already_closed:
                    return
        span = live.span
        end_ns = live.end_ns = time.time_ns()
        try:
            self._report_exit(live, error, end_ns)
        except Exception as failure:  # telemetry must never replace the user's outcome
            self.ledger.add(CALLBACK_ERROR, warning=f"recording a phase exit failed: "
                            f"{type(failure).__name__}: {failure}")
        finally:
            span.end(end_time=end_ns)

    def _report_exit(self, live: LivePhase, error: BaseException | None, end_ns: int) -> None:
        scope, span = live.scope, live.span
        figures = self._boundary.exit(live.entry)
        live.exit_figures = figures
        span.set_attributes(figures.attributes)
        if error is not None and not isinstance(error, _NOT_ERRORS):
            if self.oom_handler is not None:
                self._handle_oom(live, error)
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        self.phase_histograms.add((end_ns - live.start_ns) / 1e9, figures.primary_peak,
                                  scope.path_text, figures.device, scope.context)
        for listener in self.listeners:
            try:
                listener.phase_closed(live, error)
            except Exception:
                self.ledger.add(CALLBACK_ERROR, warning="a phase listener raised; ignored")

    def _handle_oom(self, live: LivePhase, error: BaseException) -> None:
        handler = self.oom_handler
        if handler is None:
            return
        try:
            handler(live, error)
        except Exception:
            self.ledger.add(CALLBACK_ERROR, warning="the OOM handler raised; the OOM was not dumped")

    # -- lifecycle ---------------------------------------------------------------------------
    def prepare_final_export(self, timeout_s: float = 5.0) -> bool:
        """Stop sampling, take one last sample and record pending phase histograms.

        Call it before the providers' last flush so that export shows the end state; the
        observable callbacks still answer until :meth:`shutdown`. True when the sampler
        thread ended within ``timeout_s``.
        """
        stopped = self.sampler.shutdown(timeout_s)
        try:
            self.sampler.sample_once()
        except Exception:
            _logger.debug("memspan: final sample failed", exc_info=True)
        self.phase_histograms.drain()
        return stopped

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Stop the sampler (joined within ``timeout_s``) and silence the instruments."""
        if self._closed:
            return True
        self._closed = True
        stopped = self.sampler.shutdown(timeout_s)
        self.phase_histograms.drain()
        self.flight_recorder.shutdown()
        self.instruments.disable()
        self.sampler.close()
        return stopped


class PhaseScope:
    """``with tracker.phase("step"):`` or ``@tracker.phase("step")``.

    As a context manager one object is one phase: entering it twice without leaving is a
    :class:`PhaseProtocolError`. As a decorator every call opens a fresh phase, so a
    decorated function is safe to call from many threads and tasks at once.
    """

    __slots__ = ("_attributes", "_live", "_name", "_tracker")

    def __init__(self, tracker: Tracker, name: str, attributes: Mapping[str, Any]) -> None:
        self._tracker = tracker
        self._name = name
        self._attributes = attributes
        self._live: LivePhase | None = None

    def __enter__(self) -> PhaseScope:
        if self._live is not None:
            raise PhaseProtocolError(
                f"phase {self._name!r} is already entered; create one phase() per with-block"
            )
        self._live = self._tracker.open_phase(self._name, self._attributes)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        live = self._live
        if live is None:
            raise PhaseProtocolError(f"phase {self._name!r} was exited without being entered")
        self._live = None
        self._tracker.close_phase(live, exc)

    async def __aenter__(self) -> PhaseScope:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    @property
    def scope_id(self) -> str | None:
        return self._live.scope.scope_id if self._live is not None else None

    @property
    def phase_path(self) -> str | None:
        return self._live.scope.path_text if self._live is not None else None

    @property
    def span(self) -> trace.Span | None:
        return self._live.span if self._live is not None else None

    def __call__(self, function: F) -> F:
        tracker, name, attributes = self._tracker, self._name, self._attributes
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with PhaseScope(tracker, name, attributes):
                    return await function(*args, **kwargs)

            return cast(F, async_wrapper)

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with PhaseScope(tracker, name, attributes):
                return function(*args, **kwargs)

        return cast(F, wrapper)


_default_lock = threading.Lock()
_default_tracker: Tracker | None = None


def get_tracker() -> Tracker:
    """The default tracker, created on first use with the global OTel providers."""
    global _default_tracker
    tracker = _default_tracker
    if tracker is None:
        with _default_lock:
            if _default_tracker is None:
                _default_tracker = Tracker(config=MemspanConfig.from_env())
            tracker = _default_tracker
    return tracker


def set_default_tracker(tracker: Tracker | None) -> Tracker | None:
    """Install ``tracker`` as the default; return the one it replaces."""
    global _default_tracker
    with _default_lock:
        previous, _default_tracker = _default_tracker, tracker
    return previous


def default_tracker_if_any() -> Tracker | None:
    return _default_tracker
