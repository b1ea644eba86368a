"""The tracker: one session, built and wired here; phases go through :mod:`memspan.phases.core`.

A :class:`Tracker` builds what a process needs to report memory and wires it together:
the sources and their sampler thread, the observable instruments, the phase histograms and
step counter, the phase export worker, the flight recorder and the leak watch. Each of those
receives only what it uses. Most programs use the default tracker through
:func:`memspan.phase` and :func:`memspan.configure`; programs that want several sessions create
their own.

Invariants:

- Each phase is one OTel span (kind INTERNAL), current for the phase's duration; it is
  exported through the provider's span processors (see :mod:`memspan.phases.span_path` for how).
- A user exception leaving a phase propagates unchanged; the span records it once as the
  semconv ``exception`` event with status ERROR.
- Telemetry failures never break the program: they are counted in the drop ledger.
- :meth:`Tracker.flush` and :meth:`Tracker.shutdown`, and the provider's own
  ``force_flush()``/``shutdown()``, deliver every phase that ended before the call.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import metrics, trace

from memspan import environment_variables as ev
from memspan import names
from memspan.analysis.leak_watch import LeakWatcher
from memspan.analysis.thresholds import LeakThresholds
from memspan.config import ConfigError, MemspanConfig
from memspan.drops import PROCESS_LEDGER, DropLedger
from memspan.fork_safety import reset_in_forked_children
from memspan.instruments import AlertCounter, MemoryInstruments
from memspan.names import REPORT_SUFFIX
from memspan.oom.classify import OOMKind
from memspan.oom.observer import AllocatorObserver
from memspan.oom.service import FlightRecorderService
from memspan.phases.core import PhaseCore
from memspan.phases.export import FlushHook, PhaseExporter
from memspan.phases.figures import BoundaryReader
from memspan.phases.handle import PhaseHandle
from memspan.phases.histograms import PhaseHistograms, PhaseWindowPeaks
from memspan.phases.record import PhaseSpan
from memspan.phases.scope import PhaseScope
from memspan.phases.span_path import SDK, SpanPath, SpanPaths
from memspan.phases.step_sampling import StepSampler, StepSamplingConfig
from memspan.resource import detected_rank
from memspan.sampling.sampler import Sampler
from memspan.sources import STANDARD_SOURCES
from memspan.sources.base import MemorySource
from memspan.sources.host import HostMemorySource
from memspan.sources.torch_allocator import TorchAllocatorSource
from memspan.version import __version__

if TYPE_CHECKING:
    from memspan.report.builder import ReportResult

_logger = logging.getLogger(__name__)

_S = TypeVar("_S")


def default_sources() -> list[MemorySource]:
    """Host RSS, cgroup limits, the torch allocator and NVML (each degrades on its own)."""
    return [source() for source in STANDARD_SOURCES]


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
        observer: AllocatorObserver | None = None,
        passive: bool = False,
    ) -> None:
        """``passive``: no thread at all (``OTEL_SDK_DISABLED``): neither the sampler nor the
        export worker starts; a phase is delivered on the thread that ends it."""
        self.config = config if config is not None else MemspanConfig()
        self.session_id = session_id or str(uuid.uuid4())
        self.rank = detected_rank() if rank is None else rank
        self.ledger = ledger if ledger is not None else DropLedger()
        self._closed = False
        #: a final delivery is running (a child's exit)
        self._delivering = False
        #: the providers given (None: the global ones, looked up when flushing)
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        tracer = trace.get_tracer(names.INSTRUMENTATION_NAME, __version__, tracer_provider,
                                  schema_url=names.SCHEMA_URL)
        meter = metrics.get_meter(names.INSTRUMENTATION_NAME, __version__, meter_provider,
                                  schema_url=names.SCHEMA_URL)
        self._build_sampling(meter, sources)
        self._build_phases(tracer, meter)
        self._build_flight_recorder(observer, install_excepthooks)
        self._build_leak_watch(leak_thresholds)
        if passive:
            self.exporter.shutdown(0.0)  # closed from the start: phases are delivered inline
        else:
            self.exporter.start()
        if start_sampler and not passive:
            self.sampler.start()
        reset_in_forked_children(self)
        _deliver_when_multiprocessing_children_exit(self)

    # -- forked children -------------------------------------------------------------------
    def _after_fork_in_child(self) -> None:
        """A forked child is a session of its own: scope ids never collide with the parent's
        (the sampler, the export worker and the sources restart on their own)."""
        self.session_id = str(uuid.uuid4())
        self.phases.session_id = self.session_id
        self.flight_recorder.session_id = self.session_id

    def deliver_before_exit(self, timeout_s: float = 5.0) -> None:
        """Deliver this process's pending phases and flush its providers (a child's last
        chance: ``multiprocessing`` ends its workers with ``os._exit``, past ``atexit``)."""
        if self._closed or self._delivering:
            return
        self._delivering = True
        try:
            self.prepare_final_export(timeout_s)
            self.flush_providers(timeout_s)
        except Exception:
            _logger.debug("memspan: delivering a child's phases at its exit failed",
                          exc_info=True)
        finally:
            self._delivering = False

    # -- the steps of building a session (in this order) --------------------------------------
    def _build_sampling(self, meter: metrics.Meter, sources: Sequence[MemorySource] | None
                        ) -> None:
        """Sources, their sampler thread, and one observable instrument per catalogue row
        (whose collection first delivers finished phases: ``before_collect``)."""
        self.sources = list(sources) if sources is not None else default_sources()
        self.sampler = Sampler(self.sources, interval_s=self.config.sample_interval_s,
                               slow_interval_s=self.config.nvml_interval_s, ledger=self.ledger)
        self.phase_peaks = PhaseWindowPeaks(self.ledger)
        self.instruments = MemoryInstruments(meter, lambda: self.sampler.state, self.ledger,
                                             catalogue=self.sampler.catalogue,
                                             emit_rss=self.config.rss_metric,
                                             before_collect=self.flush,
                                             phase_peaks=self.phase_peaks)
        self.torch_source = self.source(TorchAllocatorSource)

    def _build_phases(self, tracer: trace.Tracer, meter: metrics.Meter) -> None:
        """The span path, the export worker (histograms, step sampling, the flush hook on the
        provider) and the caller's-thread core, which hands finished phases to the worker."""
        catalogue = self.sampler.catalogue
        oom_count = catalogue.row(names.OOM_COUNT)
        # by kind only, every kind at zero from the start (alerts use increase())
        self.oom_counter = AlertCounter(
            meter.create_counter(oom_count.name, unit=oom_count.unit,
                                 description=oom_count.description),
            names.OOM_KIND, [kind.value for kind in OOMKind])
        self.span_paths = SpanPaths(tracer, self.config.span_mode)
        self.exporter = PhaseExporter(
            self.span_paths,
            PhaseHistograms.create(meter, catalogue.row(names.PHASE_DURATION),
                                   catalogue.row(names.PHASE_MEMORY_PEAK),
                                   window_peaks=self.phase_peaks),
            StepSampler(StepSamplingConfig.from_config(self.config)),
            meter.create_counter(names.STEP_COUNT, unit="1",
                                 description="Step traces, kept or dropped by step sampling"),
            self.ledger,
        )
        self.span_paths.install(FlushHook(self.exporter))
        self.phases = PhaseCore(
            span_paths=self.span_paths,
            boundary=BoundaryReader(self.source(HostMemorySource), self.torch_source,
                                    self.sampler, self.ledger),
            exporter=self.exporter,
            session_id=self.session_id,
            rank=self.rank,
            ledger=self.ledger,
            trace_roots=self.config.trace_root_names,
        )

    def _build_flight_recorder(self, observer: AllocatorObserver | None,
                               install_excepthooks: bool) -> None:
        """The ring, bundles and breadcrumbs: it watches phases on the caller's thread (OOM
        answers, breadcrumbs) and listens to finished ones on the export worker."""
        self.flight_recorder = FlightRecorderService(
            config=self.config, rank=self.rank, session_id=self.session_id, ledger=self.ledger,
            sampler=self.sampler, sources=self.sources, torch_source=self.torch_source,
            oom_counter=self.oom_counter, current_phase=self.phases.current,
            drain=self.exporter.drain, observer=observer,
        )
        self.phases.watch(self.flight_recorder)
        self.exporter.listeners.append(self.flight_recorder)
        if install_excepthooks:
            self.flight_recorder.install_excepthooks()

    def _build_leak_watch(self, thresholds: LeakThresholds | None) -> None:
        """Live leak suspicion from finished phases (export worker)."""
        self.leak_watch = LeakWatcher(
            self.ledger, thresholds if thresholds is not None else LeakThresholds.from_env())
        self.exporter.listeners.append(self.leak_watch)

    def source(self, kind: type[_S]) -> _S | None:
        """The first source of the given class, if this tracker has one."""
        for source in self.sources:
            if isinstance(source, kind):
                return source
        return None

    # -- settings while the session runs ------------------------------------------------------
    #: settings a running session takes (:meth:`update_settings`): where and whether bundles
    #: are written and kept, where reports go, and the settings that only the providers or
    #: the start-up line read (``job_id``: the providers' resource; ``quiet``). Every other
    #: setting is read once, when the session is built.
    LIVE_SETTINGS = FlightRecorderService.BUNDLE_SETTINGS | {"reports_dir", "job_id", "quiet"}

    def update_settings(self, **changes: Any) -> None:
        """Run on with ``changes`` (:data:`LIVE_SETTINGS` only, validated as
        :class:`MemspanConfig` validates them): later bundles and reports follow them."""
        fixed = set(changes) - self.LIVE_SETTINGS
        if fixed:
            raise ValueError(f"{', '.join(sorted(fixed))} cannot change while the session runs")
        self.config = self.config.replace(**changes)
        self.flight_recorder.use_bundle_settings(self.config)

    @property
    def uses_global_providers(self) -> bool:
        """Whether this session reports to the global providers (none were given to it)."""
        return self._tracer_provider is None and self._meter_provider is None

    def open_phases(self) -> list[PhaseSpan]:
        """The phases running in the current context, outermost first."""
        out: list[PhaseSpan] = []
        phase = self.phases.current()
        while phase is not None:
            if not phase.end_ns:  # a parent closed out of order no longer runs
                out.append(phase)
            phase = phase.parent
        return out[::-1]

    @property
    def span_path(self) -> SpanPath:
        """How this tracker's phase spans reach the provider (``deferred``, ``sync``, ``sdk``)."""
        return self.span_paths.current

    # -- public phase API --------------------------------------------------------------------
    def phase(self, name: str, /, trace_root: bool | None = None,
              **attributes: Any) -> PhaseScope:
        """A phase as a context manager or a decorator (sync, async, generator functions).

        ``trace_root=True`` starts a new trace linked to the enclosing phase (default: names
        in ``MEMSPAN_TRACE_ROOTS``, ``step``).
        """
        return PhaseScope(self.phases, name, attributes, trace_root)

    def enter_phase(self, name: str, attributes: Mapping[str, Any] | None = None,
                    trace_root: bool | None = None) -> PhaseHandle:
        """Open a phase now; close it with the returned handle (or use it in ``with``).

        Closing never raises, whatever the order: a mis-nested close is counted and flagged.
        """
        phases = self.phases
        phase = phases.open(name, attributes, trace_root)
        if phase is None:
            return PhaseHandle(scope_id="", name=str(name).strip(), path=(str(name).strip(),),
                               close_callback=_nothing, fail_callback=_ignore)
        return PhaseHandle(
            scope_id=phase.scope_id, name=phase.name, path=phase.path,
            close_callback=lambda: phases.close(phase, None),
            fail_callback=lambda error: phases.close(phase, error),
        )

    def current_phase(self) -> PhaseSpan | None:
        """The innermost phase running in the current context."""
        return self.phases.current()

    def current_phase_path(self) -> str | None:
        """The path of the innermost phase running in the current context."""
        phase = self.phases.current()
        return phase.path_text if phase is not None else None

    # -- reports -------------------------------------------------------------------------------
    def generate_report(self, folder: str | None = None, suffix: str = REPORT_SUFFIX
                        ) -> ReportResult:
        """The HTML audit of this session so far (the seed's API): flushes this session's
        phases and providers, then writes ``folder/YYYYMMDD_HHMMSS_{ENV}_{SUFFIX}.html`` (folder
        default: ``configure(reports_dir=...)``, ``$MEMSPAN_REPORTS_DIR``,
        ``$RAMFLOW_REPORTS_DIR``, ``.memory_audits``)."""
        from memspan.report.builder import generate_report  # loaded only when asked for

        self.flush_providers()
        configured = self.config.reports_dir
        default = ev.variable(ev.MEMSPAN_REPORTS_DIR).check(
            ev.variable(ev.MEMSPAN_REPORTS_DIR).default)
        return generate_report(
            folder, suffix, input_dir=self.config.output_dir, dump_dir=self.config.dump_dir,
            reports_dir=configured if configured != default else None,
            session=self.session_id)

    # -- lifecycle ---------------------------------------------------------------------------
    def flush(self) -> int:
        """Deliver every finished phase to the span processors and histograms now."""
        return self.exporter.drain()

    def flush_providers(self, timeout_s: float = 5.0) -> bool:
        """Deliver pending phases, then force-flush the tracer and meter providers this session
        reports to (theirs or memspan's); True when both finished within ``timeout_s``."""
        self.flush()
        deadline = time.monotonic() + timeout_s
        finished = True
        providers = (self._tracer_provider or trace.get_tracer_provider(),
                     self._meter_provider or metrics.get_meter_provider())
        for provider in providers:
            force_flush = getattr(provider, "force_flush", None)
            if force_flush is None:
                continue
            left = max(0.0, deadline - time.monotonic())
            try:
                finished = bool(force_flush(int(left * 1000))) and finished
            except Exception:
                _logger.debug("memspan: flushing the providers failed", exc_info=True)
                finished = False
        return finished

    def prepare_final_export(self, timeout_s: float = 5.0) -> bool:
        """Stop sampling, take one last sample and deliver pending phases.

        Call it before the providers' last flush so that export shows the end state; the
        observable callbacks still answer until :meth:`shutdown`. True when the sampler
        thread ended within ``timeout_s``. Final: from ``timeout_s`` on, phase spans the
        processors have not taken are counted, not delivered (:mod:`memspan.phases.export`).
        """
        self.exporter.give_up_at(time.monotonic() + timeout_s)
        stopped = self.sampler.shutdown(timeout_s)
        try:
            self.sampler.sample_once()
        except Exception:
            _logger.debug("memspan: final sample failed", exc_info=True)
        self.exporter.drain()
        return stopped

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Stop the sampler and the export worker (each joined within ``timeout_s``), deliver
        pending phases and silence the instruments."""
        if self._closed:
            return True
        self._closed = True
        stopped = self.sampler.shutdown(timeout_s)
        stopped = self.exporter.shutdown(timeout_s) and stopped
        self.flight_recorder.shutdown()
        self.instruments.disable()
        self.sampler.close()
        return stopped


def _deliver_when_multiprocessing_children_exit(tracker: Tracker) -> None:
    """In every ``multiprocessing`` child forked from here (``Process``, ``Pool`` workers,
    torch ``DataLoader`` workers), deliver the tracker's phases when the child ends through
    ``multiprocessing``'s own exit path (its finalizers run; ``atexit`` does not). Registered
    after the child's start-up clears inherited finalizers. Spawned children are untouched:
    they never configured memspan, so they stay pass-through."""
    try:
        from multiprocessing import util
    except ImportError:  # pragma: no cover - a stripped interpreter
        return

    def in_child(alive: Tracker) -> None:
        util.Finalize(alive, alive.deliver_before_exit, exitpriority=100)

    util.register_after_fork(tracker, in_child)


def _nothing() -> None:
    return None


def _ignore(_error: BaseException) -> None:
    return None


_default_lock = threading.Lock()
_default_tracker: Tracker | None = None
_disabled: str | None = None
#: ``memspan.shutdown()`` ran: the module-level API passes through until ``configure()``
_retired = False


def get_tracker() -> Tracker:
    """The default tracker, created on first use with the global OTel providers.

    Raises :class:`~memspan.config.ConfigError` for a bad ``MEMSPAN_*`` variable; the
    module-level API (:func:`memspan.phase` ...) uses :func:`default_tracker_or_none` instead,
    which never raises.
    """
    global _default_tracker
    tracker = _default_tracker
    if tracker is None:
        with _default_lock:
            if _default_tracker is None:
                _default_tracker = Tracker(config=MemspanConfig.from_env(),
                                           ledger=PROCESS_LEDGER)
            tracker = _default_tracker
    return tracker


def disable(reason: str) -> None:
    """Turn the module-level API into pass-throughs (a configuration error); logged once."""
    global _disabled
    if _disabled is None:
        _logger.error("memspan: disabled, the program runs without it: %s", reason)
    _disabled = reason


def disabled_reason() -> str | None:
    """Why memspan is disabled, or None when it is not."""
    return _disabled


def default_tracker_or_none() -> Tracker | None:
    """The default tracker, or None while memspan is disabled. Never raises: a configuration
    error found here disables memspan (logged once) and the program runs without it."""
    if _disabled is not None or _retired:
        return None
    try:
        return get_tracker()
    except ConfigError as error:
        disable(str(error))
        return None


def default_tracker_if_any() -> Tracker | None:
    """The default tracker if one was created (never creates one)."""
    return _default_tracker


def set_default_tracker(tracker: Tracker | None, *, retire: bool = False) -> Tracker | None:
    """Install ``tracker`` as the default (``None``: none, and memspan no longer disabled);
    return the one it replaces. ``retire`` (with ``None``: ``memspan.shutdown()``): until a
    tracker is installed again, the module-level API passes through instead of building a
    new default tracker on providers that were shut down."""
    global _default_tracker, _disabled, _retired
    with _default_lock:
        previous, _default_tracker = _default_tracker, tracker
        _disabled = None
        _retired = retire and tracker is None
    return previous


__all__ = ["SDK", "PhaseScope", "Tracker", "default_sources", "default_tracker_if_any",
           "default_tracker_or_none", "disable", "disabled_reason", "get_tracker",
           "set_default_tracker"]
