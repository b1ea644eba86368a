"""Connects a session to its flight recorder: ring events in, OOM evidence out.

Feeds the ring with phase boundaries, samples (at most one per ``sample_every_s``) and
allocator/cgroup counter increases; writes breadcrumbs when enabled; and answers an OOM
wherever it surfaces:

- escaping a phase: the innermost phase handles it (one bundle per OOM however deep the
  nesting: the exception is marked once handled), adds the ``memspan.oom`` event and the
  ``memspan.oom.dump.path`` attribute to that phase span and to the current non-phase span
  if there is one, and counts it in ``memspan.oom.count``;
- in :func:`memspan.capture_oom` blocks outside phases;
- uncaught, through chained ``sys.excepthook``/``threading.excepthook``.

Invariant: the user's exception is never replaced or swallowed; every failure here is
counted and logged once.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.metrics import Counter

from memspan import names
from memspan.config import MemspanConfig
from memspan.drops import CALLBACK_ERROR, DropLedger
from memspan.names import EventType
from memspan.oom.breadcrumb_stack import bounded_attributes
from memspan.oom.breadcrumbs import BreadcrumbWriter, breadcrumb_path
from memspan.oom.classify import OOMExceptionClassification, OOMKind, classify_oom_exception
from memspan.oom.observer import AllocatorObserver, ObservedOOM, process_observer
from memspan.oom.recorder import DumpRequest, DumpResult, OOMFlightRecorder, OOMFlightRecorderConfig
from memspan.oom.reserve import MemoryReserve, process_reserve
from memspan.phases.record import PhaseSpan
from memspan.resource import rank_identity_or_default
from memspan.sampling.sampler import CounterIncrease, Sampler
from memspan.sources.base import MemorySource, Reading
from memspan.sources.torch_allocator import TorchAllocatorSource

if TYPE_CHECKING:
    from memspan.phases.record import PhaseSpan

_logger = logging.getLogger(__name__)
#: a bound on a phase_end ring event's JSON size, path, scope id and error name excepted
_PHASE_EVENT_BYTES = 14 * 48
_HANDLED = "__memspan_oom_handled__"
_handled_ids: collections.deque[int] = collections.deque(maxlen=256)

#: the keys of a ``phase_end`` event after path and scope id, in :meth:`phase_ended`'s order
_PHASE_END_FIELDS = ("rss_start", "device", "allocated_start", "reserved_start", "rss",
                     "rss_peak", "allocated", "allocated_peak", "retained", "error")


def render_phase_end(compact: tuple[Any, ...]) -> dict[str, Any]:
    """The ``phase_end`` event of a compact ring record (absent figures are left out)."""
    path, scope_id, start_ns, end_ns = compact[:4]
    event: dict[str, Any] = {"type": EventType.PHASE_END.value, "path": path,
                             "scope_id": scope_id, "start": start_ns / 1e9,
                             "end": end_ns / 1e9, "duration_s": (end_ns - start_ns) / 1e9}
    for key, value in zip(_PHASE_END_FIELDS, compact[4:], strict=True):
        if value is not None:
            event[key] = value
    return event


def mark_handled(error: BaseException) -> None:
    try:
        setattr(error, _HANDLED, True)
    except (AttributeError, TypeError):
        _handled_ids.append(id(error))


def is_handled(error: BaseException) -> bool:
    return bool(getattr(error, _HANDLED, False)) or id(error) in _handled_ids


def _hex_ids(span: trace.Span) -> tuple[str | None, str | None]:
    context = span.get_span_context()
    if not context.is_valid:
        return None, None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def phase_stack(scope: PhaseSpan | None) -> list[dict[str, Any]]:
    """The open phases from the outermost to ``scope``, each with its user attributes.

    Walks the live parent links; :func:`memspan.launcher.breadcrumb_bundles.open_phases`
    rebuilds the same stack (``name``, ``path``, ``scope_id``) from breadcrumb events when only
    those survive (a SIGKILLed child).
    """
    stack = []
    node = scope
    while node is not None:
        stack.append({"name": node.name, "path": node.path_text, "scope_id": node.scope_id,
                      "depth": node.depth, "thread_id": node.thread_id,
                      "thread_name": node.thread.name,
                      "attributes": {str(k): _json_value(v) for k, v in node.attributes.items()}})
        node = node.parent
    stack.reverse()
    return stack


def _json_value(value: Any) -> Any:
    """An attribute value as JSON can hold it (OTel sequences are tuples)."""
    return list(value) if isinstance(value, tuple) else value


class FlightRecorderService:
    """A session's flight recorder, its breadcrumbs, and its OOM responses.

    It is given only what it uses: the session's settings and identity, the sampler and
    sources (for samples and the memory snapshot), the OOM counter, and two callables: the
    innermost open phase, and a drain that delivers finished phases (so the ring holds the
    latest phase boundaries before a dump). It is a phase listener (:meth:`phase_ended`, on
    the export worker) and a phase watcher (:class:`~memspan.phases.core.PhaseWatcher`:
    :meth:`phase_failed` answers errors leaving a phase on the caller's thread,
    :meth:`phase_started` writes breadcrumbs when they are on).
    """

    def __init__(
        self,
        *,
        config: MemspanConfig,
        rank: int,
        session_id: str,
        ledger: DropLedger,
        sampler: Sampler,
        sources: Sequence[MemorySource],
        torch_source: TorchAllocatorSource | None,
        oom_counter: Counter,
        current_phase: Callable[[], PhaseSpan | None],
        drain: Callable[[], object],
        observer: AllocatorObserver | None = None,
        sample_every_s: float = 1.0,
    ) -> None:
        self.config = config
        self.session_id = session_id
        self.ledger = ledger
        self.sampler = sampler
        self.sources = list(sources)
        self.torch_source = torch_source
        self.oom_counter = oom_counter
        self._current_phase = current_phase
        self._drain = drain
        self.recorder = OOMFlightRecorder(
            OOMFlightRecorderConfig(enabled=config.oom_enabled, dump_dir=config.dump_dir,
                                    buffer_size=config.buffer_size, max_dumps=config.max_dumps,
                                    max_total_mb=config.max_total_mb),
            rank_identity=rank_identity_or_default(rank),
            ledger=ledger,
            memory_provider=self.memory_snapshot,
        )
        self.observer = observer if observer is not None else process_observer()
        self.observer.capture_history = config.cuda_history
        self.sample_every_s = sample_every_s
        #: address space held back for a bundle after a host MemoryError (memspan.oom.reserve)
        self.reserve: MemoryReserve | None = process_reserve() if config.oom_enabled else None
        self._last_sample = 0.0
        self._history_started = False
        self.breadcrumbs: BreadcrumbWriter | None = None
        if config.breadcrumbs:
            self.breadcrumbs = BreadcrumbWriter(
                breadcrumb_path(config.dump_dir, rank, os.getpid()),
                self.recorder.ring,
                {"pid": os.getpid(), "rank": rank, "session_id": session_id,
                 "started_at": time.time(), "dump_dir": os.path.abspath(config.dump_dir)},
                ledger=ledger,
            )
        #: phase starts are written at once only to breadcrumbs (see :meth:`phase_started`)
        self.watches_starts = self.breadcrumbs is not None
        sampler.add_listener(self.on_sample)
        self.observer.add_listener(self.on_observed)
        self._previous_excepthook: Any = None
        self._previous_threading_hook: Any = None
        self._closed = False

    #: the settings :meth:`use_bundle_settings` can change while the session runs
    BUNDLE_SETTINGS = frozenset({"dump_dir", "oom_enabled", "max_dumps", "max_total_mb"})

    def use_bundle_settings(self, config: MemspanConfig) -> None:
        """Write later bundles with ``config``'s :data:`BUNDLE_SETTINGS` (where, whether, how
        many are kept); the ring, the hooks and the breadcrumbs stay as they are (a reader of
        breadcrumbs, ``memspan run``, looks for them where the session started)."""
        self.config = config
        self.recorder.config = dataclasses.replace(
            self.recorder.config, enabled=config.oom_enabled, dump_dir=config.dump_dir,
            max_dumps=config.max_dumps, max_total_mb=config.max_total_mb)

    # -- ring feeding ------------------------------------------------------------------------
    def phase_started(self, phase: PhaseSpan) -> None:
        """A ``phase_start`` ring event (with the parent's scope id and the bounded user
        attributes), and the phase in the breadcrumb stack file (caller's thread).

        Wired only when breadcrumbs are on (``memspan run``): a SIGKILL leaves no chance to
        write later, so the open phase stack must be on disk before the phase's work runs.
        The stack file is a memory write (:mod:`memspan.oom.breadcrumb_stack`); only
        without one does a start cost a breadcrumb write (see docs/performance.md). Without
        breadcrumbs, open phases reach a dump through the phase stack instead.
        """
        event: dict[str, Any] = {"type": EventType.PHASE_START.value, "path": phase.path_text,
                                 "scope_id": phase.scope_id}
        entry = phase.entry
        if entry is not None:
            if entry.rss is not None:
                event["rss"] = entry.rss
            if entry.allocator is not None:
                event["device"] = entry.allocator.device
                event["allocated"] = entry.allocator.allocated
        parent = phase.parent
        if parent is not None:
            event["parent_scope_id"] = parent.scope_id
        if phase.attributes:
            attributes, truncated = bounded_attributes(phase.attributes)
            event["attributes"] = attributes
            if truncated:
                event["attributes_truncated"] = truncated
        self.recorder.ring.record_owned(event)
        breadcrumbs = self.breadcrumbs
        if breadcrumbs is not None and not breadcrumbs.phase_opened(phase):
            # no stack file (or no free slot in it): the start must reach the breadcrumb
            # file now. force: wait for a flush another thread is doing rather than leave
            # this start to it; a SIGKILL right after would otherwise take the stack with it
            breadcrumbs.flush(force=True)

    def phase_closed(self, phase: PhaseSpan) -> None:
        """``phase`` closed (caller's thread, before its export): its slot in the breadcrumb
        stack file becomes its end record, so a SIGKILL right after cannot show it open."""
        breadcrumbs = self.breadcrumbs
        if breadcrumbs is not None:
            breadcrumbs.phase_closed(phase)

    def phase_ended(self, phase: PhaseSpan) -> None:
        """One ``phase_end`` ring event per finished phase, with its start and end figures
        and times (export worker), stamped with the phase's end time, not the worker's.
        Recorded compact (its dict is built only if a dump or breadcrumb reads it). Open
        phases are not in the ring: a dump and a breadcrumb take them from the open-phase
        stack instead."""
        entry = phase.entry
        figures = phase.exit
        allocator = entry.allocator if entry is not None else None
        compact = (
            phase.path_text, phase.scope_id, phase.start_ns, phase.end_ns,
            entry.rss if entry is not None else None,
            allocator.device if allocator is not None else None,
            allocator.allocated if allocator is not None else None,
            allocator.reserved if allocator is not None else None,
            figures.rss_end if figures is not None else None,
            figures.rss_peak if figures is not None else None,
            figures.allocated_end if figures is not None else None,
            figures.allocated_peak if figures is not None else None,
            figures.retained if figures is not None else None,
            phase.error,
        )
        size = (_PHASE_EVENT_BYTES + len(phase.path_text) + len(phase.scope_id)
                + len(phase.error or ""))
        ring = self.recorder.ring
        if size <= ring.max_bytes_per_event:
            ring.record_rendered(compact, render_phase_end, size, phase.end_ns / 1e9)
        else:  # a huge path: the ring truncates it like any oversized event
            ring.record_owned(render_phase_end(compact))
        if self.breadcrumbs is not None:
            self.breadcrumbs.flush()

    def on_sample(self, readings: Sequence[Reading], increases: Sequence[CounterIncrease]) -> None:
        reserve = self.reserve
        if reserve is not None and not reserve.held:
            reserve.restore()  # released for an OOM: taken back once memory allows
        for increase in increases:
            event_type = self.sampler.catalogue.counter_events.get(increase.metric)
            if event_type is not None:
                self.recorder.record_event({
                    "type": event_type.value, "metric": increase.metric,
                    "attributes": dict(increase.attributes),
                    "before": increase.before, "after": increase.after,
                })
        now = time.monotonic()
        if now - self._last_sample >= self.sample_every_s:
            self._last_sample = now
            values = {}
            for reading in readings:
                key = reading.metric
                device = dict(reading.attributes).get(names.MEMORY_DEVICE) or dict(
                    reading.attributes).get(names.HW_ID)
                values[f"{key}[{device}]" if device else key] = reading.value
            self.recorder.record_event({"type": EventType.SAMPLE.value, "values": values})
            if self.torch_source is not None and self.torch_source.initialized():
                self._ensure_observer()
        if self.breadcrumbs is not None:
            self.breadcrumbs.flush()

    def on_observed(self, observed: ObservedOOM) -> None:
        self.recorder.record_event({
            "type": EventType.ALLOCATOR_OOM.value, "source": "observer",
            "device": f"cuda:{observed.device}", "requested_bytes": observed.requested_bytes,
            "device_allocated_bytes": observed.device_allocated_bytes,
            "device_free_bytes": observed.device_free_bytes,
        })
        if self.breadcrumbs is not None:
            self.breadcrumbs.flush(force=True)

    def device_phase_seen(self) -> None:
        """Attach the allocator's OOM observer (first phase on an initialised device)."""
        self._ensure_observer()

    def _ensure_observer(self) -> None:
        if self.observer.attached:
            return
        if self.observer.ensure_attached() and self.config.cuda_history:
            self._start_history()

    def _start_history(self) -> None:
        if self._history_started:
            return
        self._history_started = True
        torch = sys.modules.get("torch")
        try:
            if torch is not None:
                torch.cuda.memory._record_memory_history(max_entries=100_000)
        except Exception as error:
            _logger.warning("memspan: CUDA memory history could not be enabled: %s", error)

    # -- OOM responses -----------------------------------------------------------------------
    @staticmethod
    def _claim(error: BaseException) -> OOMExceptionClassification | None:
        """The classification of an OOM nobody handled yet (now marked handled), else None."""
        if is_handled(error):
            return None
        classification = classify_oom_exception(error)
        if not classification.is_oom:
            return None
        mark_handled(error)
        return classification

    def phase_failed(self, phase: PhaseSpan, error: BaseException) -> None:
        """An exception is leaving ``phase`` (caller's thread, before the phase ends)."""
        self._release_reserve(error)
        classification = self._claim(error)
        if classification is None:
            return
        phase.oom = True
        span = phase  # what user code sees as the current span, on either span path
        self._respond(error, classification, span, enclosing_non_phase_span(phase), phase,
                      context=phase.path_text)

    def capture(self, error: BaseException, context: str | None,
                metadata: Mapping[str, Any] | None) -> None:
        """An OOM caught by :func:`memspan.capture_oom` (not yet handled by a phase)."""
        self._release_reserve(error)
        classification = self._claim(error)
        if classification is None:
            return
        span = trace.get_current_span()
        self._respond(error, classification, span if span.is_recording() else None, None,
                      self._current_phase(), context=context, metadata=metadata)

    def capture_quietly(self, error: BaseException, context: str | None,
                        metadata: Mapping[str, Any] | None = None) -> None:
        """:meth:`capture` for callers about to re-raise or print the user's exception: a
        failure here is counted, never raised over theirs."""
        try:
            self.capture(error, context, metadata)
        except Exception as failure:
            try:
                self.ledger.add(CALLBACK_ERROR, warning="handling an OOM failed: "
                                        f"{type(failure).__name__}")
            except Exception:
                pass

    def _release_reserve(self, error: BaseException) -> None:
        """A host ``MemoryError`` may have taken the last byte: free the reserve before
        anything else allocates (classifying, draining, writing the bundle)."""
        if isinstance(error, MemoryError) and self.reserve is not None and not is_handled(error):
            self.reserve.release()

    def _respond(self, error: BaseException, classification: OOMExceptionClassification,
                 span: trace.Span | None, extra_span: trace.Span | None,
                 scope: PhaseSpan | None, *, context: str | None,
                 metadata: Mapping[str, Any] | None = None) -> DumpResult:
        try:
            self._drain()  # the ring gets the phases that ended just before the OOM
            classification, observed = self._refine(classification)
            trace_id, span_id = _hex_ids(span) if span is not None else (None, None)
            self.recorder.record_event({"type": EventType.OOM.value, "kind": classification.kind,
                                        "reason": classification.reason,
                                        "path": scope.path_text if scope else None})
            result = self.recorder.write_dump(DumpRequest(
                reason=classification.reason or "oom", exception=error, context=context,
                backend=_backend(classification), classification=classification,
                metadata=metadata, trace_id=trace_id, span_id=span_id,
                phase_path=scope.path_text if scope else None,
                scope_id=scope.scope_id if scope else None,
                session_id=self.session_id, phases=phase_stack(scope),
                cuda_snapshot=observed.snapshot if observed is not None else None,
                observer_figures=None if observed is None else {
                    "device": observed.device, "requested_bytes": observed.requested_bytes,
                    "device_allocated_bytes": observed.device_allocated_bytes,
                    "device_free_bytes": observed.device_free_bytes,
                },
            ))
            attributes = oom_event_attributes(classification, result)
            for target in (span, extra_span):
                if target is None:
                    continue
                target.add_event(names.OOM_EVENT, attributes)
                if result.path is not None:
                    target.set_attribute(names.OOM_DUMP_PATH, result.path)
            self.oom_counter.add(1, {
                names.OOM_KIND: classification.kind or "unknown",
                names.PHASE_PATH: scope.path_text if scope else "",
            })
            if self.breadcrumbs is not None:
                self.breadcrumbs.flush(force=True)
            return result
        except Exception as failure:
            self.ledger.add(CALLBACK_ERROR,
                                    warning=f"handling an OOM failed: {type(failure).__name__}")
            return DumpResult(None, f"{type(failure).__name__}: {failure}")

    def _refine(self, c: OOMExceptionClassification
                ) -> tuple[OOMExceptionClassification, ObservedOOM | None]:
        """Prefer the allocator observer's exact integers over figures parsed from text."""
        observed = self.observer.fresh() if c.kind == OOMKind.DEVICE.value else None
        if observed is None:
            return c, None
        return dataclasses.replace(
            c, requested_bytes=observed.requested_bytes, device=f"cuda:{observed.device}",
            device_free_bytes=observed.device_free_bytes,
        ), observed

    # -- uncaught exceptions -----------------------------------------------------------------
    def install_excepthooks(self) -> None:
        self._previous_excepthook = sys.excepthook
        self._previous_threading_hook = threading.excepthook
        sys.excepthook = self._excepthook
        threading.excepthook = self._threading_excepthook

    def _excepthook(self, exc_type: type[BaseException], exc: BaseException,
                    tb: TracebackType | None) -> None:
        """Dump an uncaught OOM, then always hand the exception to the previous hook."""
        try:
            self.capture_quietly(exc, "uncaught exception")
        finally:
            previous = self._previous_excepthook or sys.__excepthook__
            previous(exc_type, exc, tb)

    def _threading_excepthook(self, args: threading.ExceptHookArgs) -> None:
        """Likewise for threads: the original traceback is printed whatever happens here."""
        try:
            if args.exc_value is not None:
                thread = _thread_name(args.thread)
                self.capture_quietly(args.exc_value, f"uncaught exception in thread {thread}")
        finally:
            previous = self._previous_threading_hook or threading.__excepthook__
            previous(args)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        if sys.excepthook == self._excepthook:
            sys.excepthook = self._previous_excepthook or sys.__excepthook__
        if threading.excepthook == self._threading_excepthook:
            threading.excepthook = self._previous_threading_hook or threading.__excepthook__
        self.observer.remove_listener(self.on_observed)
        self.sampler.remove_listener(self.on_sample)
        if self.breadcrumbs is not None:
            self.breadcrumbs.remove()

    def memory_snapshot(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for source in self.sources:
            try:
                out[source.name] = source.snapshot()
            except Exception as error:
                out[source.name] = {"error": f"{type(error).__name__}: {error}"}
        out["latest_samples"] = [
            {"metric": metric, "attributes": dict(attrs), "value": value}
            for metric, attrs, value in sorted(self.sampler.state.items())
        ]
        return out


def _thread_name(thread: threading.Thread | None) -> str:
    try:
        return str(thread.name) if thread is not None else "?"
    except Exception:
        return "?"


def enclosing_non_phase_span(phase: PhaseSpan) -> trace.Span | None:
    """The nearest still-open span around ``phase`` that is not a phase span, if any."""
    node: PhaseSpan | None = phase
    while node is not None:
        outer: trace.Span | None = getattr(node, "outer_span", None)
        if outer is not None and outer.is_recording():
            return outer
        node = node.parent
    return None


def oom_event_attributes(c: OOMExceptionClassification, result: DumpResult) -> dict[str, Any]:
    attributes: dict[str, Any] = {names.OOM_KIND: c.kind or "unknown",
                                  names.OOM_REASON: c.reason or "unknown"}
    for key, value in ((names.OOM_REQUESTED_BYTES, c.requested_bytes),
                       (names.OOM_DEVICE, c.device),
                       (names.OOM_DEVICE_FREE_BYTES, c.device_free_bytes),
                       (names.OOM_DEVICE_TOTAL_BYTES, c.device_total_bytes),
                       (names.OOM_ALLOCATED_BYTES, c.allocated_bytes),
                       (names.OOM_RESERVED_UNALLOCATED_BYTES, c.reserved_unallocated_bytes),
                       (names.OOM_SUGGESTION, c.suggestion)):
        if value is not None:
            attributes[key] = value
    if result.path is not None:
        attributes[names.OOM_DUMP_PATH] = result.path
        attributes[names.FILE_PATH] = result.path
    else:
        attributes[names.OOM_DUMP_ERROR] = result.error or "unknown error"
    return attributes


def _backend(c: OOMExceptionClassification) -> str:
    if c.kind == OOMKind.HOST.value:
        return "cpu"
    if c.device:
        return c.device.split(":", 1)[0]
    return "cuda" if c.kind == OOMKind.DEVICE.value else "unknown"


@contextmanager
def capture_oom_block(service: FlightRecorderService | None, context: str | None,
                      metadata: Mapping[str, Any] | None) -> Iterator[None]:
    try:
        yield
    except BaseException as error:
        if service is not None:
            service.capture_quietly(error, context, metadata)
        raise
