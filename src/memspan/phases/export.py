"""Finished phases, off the caller's thread: step decisions, spans, histograms, listeners.

The caller's thread hands each finished :class:`~memspan.phases.record.PhaseSpan` to
:meth:`PhaseExporter.submit` (one bounded append). A worker thread drains the buffer every
``interval_s`` (sooner when it is a quarter full) and, for each phase in the order they ended:

1. routes it through step sampling (phases of an undecided step wait for their root);
2. tells the listeners (flight-recorder ring, leak watch), which may add events to it;
3. builds the finished ``ReadableSpan`` (``deferred`` path) or ends the SDK span (``sdk``
   path) and hands it to the provider's span processors;
4. records the two phase histograms for the batch (:mod:`memspan.phases.histograms`).

Invariants:

- Bounded: at most ``max_pending`` phases wait; a phase that finds the buffer full is dropped
  and counted (``phase_buffer_full``), as the SDK's batch processor drops spans. Phases waiting
  for their step's decision are bounded too (``max_step_phases``): past it the oldest open
  step is decided as kept (``overflow``), never lost.
- Delivered on demand: :meth:`PhaseExporter.drain` runs under one lock from any thread; the
  provider's ``force_flush()`` and ``shutdown()`` drain first (through :class:`FlushHook`,
  placed before the user's processors), and so do memspan's own flush and shutdown and an OOM
  dump (so the ring holds the latest phases).
- A listener or processor that raises is counted (``callback_error``) and skipped; the other
  phases of the batch are still delivered.
- Fork-safe: a forked child starts with an empty buffer (the parent's phases are the
  parent's to export) and its own worker.
- After :meth:`PhaseExporter.shutdown`, a phase that still ends (it was open at shutdown, or
  opened after) is delivered at once on the thread that ends it: never left in a buffer
  nobody drains.
- Final delivery has a deadline, whatever a span processor does (a ``SimpleSpanProcessor``
  whose exporter takes a second a span, one that never returns): once
  :meth:`PhaseExporter.give_up_at` is set (the final drain, :meth:`PhaseExporter.shutdown`),
  every thread delivering spans checks it before each ``on_end`` and counts the spans it no
  longer hands over (``export_deadline``), and a shutdown that cannot take the drain lock by
  then (a processor blocked forever holds it) takes the pending phases out and counts them.
  The one span inside a blocked ``on_end`` is the exporter's. Histograms are still recorded
  for every phase: the metrics of the final export are complete.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from typing import Any, Protocol

from opentelemetry.context import Context
from opentelemetry.metrics import Counter
from opentelemetry.sdk.trace import ReadableSpan

from memspan import names
from memspan.drops import (
    CALLBACK_ERROR,
    EXPORT_DEADLINE,
    PHASE_BUFFER_FULL,
    STEP_BUFFER_FULL,
    DropLedger,
)
from memspan.fork_safety import reset_in_forked_children
from memspan.phases.figures import BoundaryReader
from memspan.phases.histograms import PhaseHistograms, PhaseSample
from memspan.phases.name_series import SeriesPaths
from memspan.phases.record import PhaseSpan, StepTrace
from memspan.phases.span_build import add_exit_attributes, build_span
from memspan.phases.span_path import SDK, PassiveProcessor, SpanPath, SpanPaths
from memspan.phases.step_sampling import ALL, DROPPED, OVERFLOW, StepSampler

_logger = logging.getLogger(__name__)



class PhaseListener(Protocol):
    """Told about every finished phase, on the export worker, before its span is built."""

    def phase_ended(self, phase: PhaseSpan) -> None: ...


class PhaseExporter:
    """The buffer of finished phases and the worker that delivers them (module docstring)."""

    def __init__(
        self,
        span_paths: SpanPaths,
        histograms: PhaseHistograms,
        steps: StepSampler,
        step_counter: Counter,
        ledger: DropLedger,
        *,
        interval_s: float = 0.1,
        max_pending: int = 8192,
        max_step_phases: int = 65_536,
        max_open_steps: int = 1024,
    ) -> None:
        self.span_paths = span_paths
        self.histograms = histograms
        self.steps = steps
        self._step_counter = step_counter
        self.ledger = ledger
        self.interval_s = interval_s
        self.max_pending = max_pending
        self.max_step_phases = max_step_phases
        self.max_open_steps = max_open_steps
        self.listeners: list[PhaseListener] = []
        self._pending: deque[PhaseSpan] = deque()
        self._wake_at = max(1, max_pending // 4)
        self._drain_lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: step traces whose root is open, by trace id (foreign spans mark them)
        self.open_steps: OrderedDict[int, StepTrace] = OrderedDict()
        #: undecided steps holding buffered phases, oldest first
        self._waiting: OrderedDict[int, StepTrace] = OrderedDict()
        self._waiting_phases = 0
        self._closed = False
        self._warned_sdk_sampling = False
        #: monotonic time after which no span is handed to a processor (final delivery)
        self._give_up_at = math.inf
        #: bounds the histogram series when phase names embed step numbers
        self.series_paths = SeriesPaths(ledger)
        #: spans counted as ``export_deadline`` by this exporter
        self.undelivered = 0
        reset_in_forked_children(self)

    # -- the caller's side ------------------------------------------------------------------
    def submit(self, phase: PhaseSpan) -> None:
        if self._closed:  # after shutdown no worker drains: deliver it now, on this thread
            with self._drain_lock:
                self._deliver([phase], bounded=False)
            return
        pending = self._pending
        size = len(pending)
        if size >= self.max_pending:
            self.ledger.add(PHASE_BUFFER_FULL, warning=(
                f"{self.max_pending} finished phases were waiting for export; phases are being "
                "dropped (open fewer, coarser phases, or raise the sample rate)"))
            return
        pending.append(phase)
        if size + 1 == self._wake_at:
            self._wake.set()

    def deliver_span(self, phase: PhaseSpan, path: SpanPath) -> None:
        """Hand ``phase``'s finished span to the processors now (caller's thread, at its exit:
        the ``sync`` and ``sdk`` paths). Its histograms and listeners follow on the worker.

        Phases that will never be exported (an auto phase a user phase took over) are left
        alone; a failure to build or end the span is counted, never raised."""
        step = phase.step
        if phase.dissolved or (step is not None and step.root.dissolved):
            return
        phase.span_delivered = True
        if step is not None and not self.steps.keeps_all:
            self._warn_sampling_needs_deferral(path)
        if step is not None and phase is step.root and step.decision is None:
            step.decision = ALL  # a span out at its exit cannot be dropped later
        if phase.sdk_span is not None:
            phase.span_exported = self._end_sdk_span(phase)
            return
        if not phase.recording or path.sdk_tracer is None:
            return
        try:
            span = build_span(phase, path, True)
        except Exception as error:
            self.ledger.add(CALLBACK_ERROR, warning=(
                f"building a phase span failed ({type(error).__name__}: {error})"))
            return
        phase.span_exported = True
        try:
            path.sdk_tracer.span_processor.on_end(span)
        except Exception as error:
            self.ledger.add(CALLBACK_ERROR, warning=(
                f"a span processor raised in on_end ({type(error).__name__}: {error})"))

    def open_step(self, step: StepTrace) -> None:
        """A step root opened (caller's thread): foreign spans in its trace mark it."""
        steps = self.open_steps
        steps[step.root.span_context.trace_id] = step
        if len(steps) > self.max_open_steps:
            steps.popitem(last=False)

    def note_span_started(self, trace_id: int) -> None:
        """Another instrumentation started a span in ``trace_id`` (from :class:`FlushHook`)."""
        step = self.open_steps.get(trace_id)
        if step is not None:
            step.foreign = True

    # -- the worker ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="memspan-phase-export",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            try:
                self.span_paths.recheck()  # processors added since: new phases follow them
            except Exception:
                self.ledger.add(CALLBACK_ERROR)
            self.drain()

    def give_up_at(self, deadline: float) -> None:
        """From ``deadline`` (``time.monotonic()``) on, final delivery stops handing spans to
        the processors and counts them instead (module docstring). Only ever moves earlier."""
        self._give_up_at = min(self._give_up_at, deadline)

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Stop the worker and deliver what is pending by ``timeout_s`` from now, whatever the
        processors do; what is not delivered by then is counted. True when it ended in time."""
        deadline = time.monotonic() + timeout_s
        self.give_up_at(deadline)
        self._stop.set()
        self._wake.set()
        self._closed = True
        thread, self._thread = self._thread, None
        ended = True
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))
            ended = not thread.is_alive()
        self.drain()
        self.flush_waiting_steps()
        return ended and self.undelivered == 0 and time.monotonic() <= deadline

    def _lock_for_delivery(self) -> bool:
        """Take the drain lock: without a deadline, waiting as long as it takes; with one, until
        the deadline (False: a delivery blocked in a processor holds it)."""
        give_up = self._give_up_at
        if give_up == math.inf:
            return self._drain_lock.acquire()
        return self._drain_lock.acquire(timeout=max(0.0, give_up - time.monotonic()))

    def _abandon_pending(self) -> None:
        """The deadline passed with the lock held elsewhere: what waits is never delivered."""
        abandoned = 0
        pending = self._pending
        while pending:
            try:
                pending.popleft()
            except IndexError:
                break
            abandoned += 1
        if abandoned:
            self._count_undelivered(abandoned)

    def _count_undelivered(self, count: int) -> None:
        self.undelivered += count
        self.ledger.add(EXPORT_DEADLINE, count, warning=(
            "the span processors did not take every finished phase by the shutdown deadline; "
            "the spans left over were dropped (a span exporter is slow or blocked)"))

    def _after_fork_in_child(self) -> None:
        was_running = self._thread is not None
        self._pending = deque()
        self._drain_lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        self.open_steps = OrderedDict()
        self._waiting = OrderedDict()
        self._waiting_phases = 0
        if was_running:
            try:
                self.start()
            except RuntimeError:  # pragma: no cover - interpreter shutting down
                pass

    # -- delivery -------------------------------------------------------------------------------
    def drain(self) -> int:
        """Deliver every pending phase now (any thread); returns how many were taken."""
        if not self._pending:
            return 0
        if not self._lock_for_delivery():
            self._abandon_pending()
            return 0
        try:
            pending = self._pending
            batch: list[PhaseSpan] = []
            append = batch.append
            popleft = pending.popleft
            while pending:
                try:
                    append(popleft())
                except IndexError:
                    break
            if batch:
                self._deliver(batch)
            return len(batch)
        finally:
            self._drain_lock.release()

    def flush_waiting_steps(self) -> None:
        """Decide every step still waiting for its root as kept (at shutdown)."""
        if not self._waiting:
            return
        if not self._lock_for_delivery():
            self._count_undelivered(self._waiting_phases)
            return
        try:
            out: list[PhaseSpan] = []
            while self._waiting:
                _, step = self._waiting.popitem(last=False)
                self._release(step, OVERFLOW, out)
            if out:
                self._deliver_decided(out)
        finally:
            self._drain_lock.release()

    def _deliver(self, batch: Sequence[PhaseSpan], *, bounded: bool = True) -> None:
        path = self.span_paths.current
        decided: list[tuple[PhaseSpan, bool]] = []
        keeps_all = self.steps.keeps_all
        for phase in batch:
            step = phase.step
            if phase.dissolved or (step is not None and step.root.dissolved):
                continue  # a user phase took its place, or an auto step that was no iteration
            if step is None:
                decided.append((phase, True))
            elif keeps_all or phase.span_delivered:
                if not keeps_all:  # its span is out already: the step cannot be dropped
                    self._warn_sampling_needs_deferral(path)
                    decided.append((phase, True))
                    if phase is step.root:
                        out: list[PhaseSpan] = []
                        self._waiting.pop(step.root.span_context.trace_id, None)
                        self._release(step, ALL, out)  # phases buffered before a path switch
                        decided.extend((p, True) for p in out)
                    continue
                decided.append((phase, True))
                if phase is step.root:
                    step.decision = ALL
                    self._count_step(ALL)
                    self._close_step(step)
            else:
                self._route(phase, step, decided)
        self._emit(decided, path, bounded=bounded)

    def _warn_sampling_needs_deferral(self, path: SpanPath) -> None:
        if not self._warned_sdk_sampling:
            self._warned_sdk_sampling = True
            _logger.warning(
                "memspan: step sampling needs phase spans built by memspan off the caller's "
                "thread (the deferred span path); here each phase span reaches the span "
                "processors when it ends (%s path: %s), so every step is exported",
                path.mode, path.reason)

    def _deliver_decided(self, phases: list[PhaseSpan]) -> None:
        self._emit([(p, p.step is None or p.step.decision != DROPPED) for p in phases],
                   self.span_paths.current)

    def _route(self, phase: PhaseSpan, step: StepTrace,
               decided: list[tuple[PhaseSpan, bool]]) -> None:
        if step.decision is not None:  # a phase that outlived its step's root
            decided.append((phase, step.decision != DROPPED))
            return
        if phase is not step.root:
            step.buffered.append(phase)
            key = step.root.span_context.trace_id
            if key not in self._waiting:
                self._waiting[key] = step
            self._waiting_phases += 1
            if self._waiting_phases > self.max_step_phases:
                self.ledger.add(STEP_BUFFER_FULL)
                _, oldest = self._waiting.popitem(last=False)
                out: list[PhaseSpan] = []
                self._release(oldest, OVERFLOW, out)
                decided.extend((p, True) for p in out)
            return
        reason = self.steps.decide(step)
        self._waiting.pop(step.root.span_context.trace_id, None)
        out = []
        self._release(step, reason, out, with_root=True)
        keep = reason != DROPPED
        decided.extend((p, keep) for p in out)

    def _release(self, step: StepTrace, reason: str, out: list[PhaseSpan],
                 *, with_root: bool = False) -> None:
        """Decide ``step`` (if not yet) and move its buffered phases to ``out``; its root too
        when the root itself is being routed (``with_root``). Decided early (overflow,
        shutdown), the root is routed on its own when it arrives, exactly once."""
        if step.decision is None:
            step.decision = reason
        self._count_step(step.decision)
        self._waiting_phases -= len(step.buffered)
        out.extend(step.buffered)
        step.buffered = []
        if with_root:
            out.append(step.root)
        self._close_step(step)

    def _close_step(self, step: StepTrace) -> None:
        self.open_steps.pop(step.root.span_context.trace_id, None)

    def _count_step(self, reason: str) -> None:
        decision = "dropped" if reason == DROPPED else "kept"
        try:
            self._step_counter.add(1, {names.STEP_DECISION: decision,
                                       names.STEP_KEEP_REASON: reason})
        except Exception:
            self.ledger.add(CALLBACK_ERROR)

    def _past_deadline(self, bounded: bool) -> bool:
        give_up = self._give_up_at
        return bounded and give_up != math.inf and time.monotonic() >= give_up

    def _emit(self, decided: Sequence[tuple[PhaseSpan, bool]], path: SpanPath, *,
              bounded: bool = True) -> None:
        samples: list[PhaseSample] = []
        spans: list[ReadableSpan] = []
        sdk_path = path.mode == SDK
        series_path = self.series_paths.series_path
        late = 0
        for phase, keep in decided:
            for listener in self.listeners:
                try:
                    listener.phase_ended(phase)
                except Exception as error:
                    self.ledger.add(CALLBACK_ERROR, warning=(
                        f"a phase listener raised ({type(error).__name__}: {error}); ignored"))
            exported = keep and phase.recording
            if phase.span_delivered:
                exported = phase.span_exported
            elif sdk_path or phase.sdk_span is not None:
                if self._past_deadline(bounded):
                    exported = False
                    late += 1
                else:
                    exported = self._end_sdk_span(phase)
            elif exported:
                try:
                    spans.append(build_span(phase, path, keep))
                except Exception as error:
                    exported = False
                    self.ledger.add(CALLBACK_ERROR, warning=(
                        f"building a phase span failed ({type(error).__name__}: {error})"))
            figures = phase.exit
            samples.append((
                (phase.end_ns - phase.start_ns) / 1e9,
                figures.primary_peak if figures is not None else None,
                series_path(phase.path_text),
                figures.device if figures is not None else "host",
                phase.span_context if exported and phase.span_context.trace_flags.sampled
                else None,
            ))
            if phase.step is not None and phase is phase.step.root:
                phase.step = None  # the step is decided: break the root <-> step cycle
        if spans:
            processor = path.sdk_tracer.span_processor
            for index, span in enumerate(spans):
                if self._past_deadline(bounded):
                    late += len(spans) - index
                    break
                try:
                    processor.on_end(span)
                except Exception as error:
                    self.ledger.add(CALLBACK_ERROR, warning=(
                        f"a span processor raised in on_end ({type(error).__name__}: {error})"))
        if late:
            self._count_undelivered(late)
        try:
            self.histograms.record_batch(samples)
        except Exception as error:
            self.ledger.add(CALLBACK_ERROR, warning=(
                f"recording phase histograms failed ({type(error).__name__}: {error})"))

    def _end_sdk_span(self, phase: PhaseSpan) -> bool:
        span = phase.sdk_span
        if span is None:
            return False
        try:
            attributes: dict[str, Any] = {}
            if phase.entry is not None:  # read after the SDK span started
                BoundaryReader.entry_attributes(phase.entry, attributes)
            step = phase.step
            add_exit_attributes(phase, attributes,
                                step.decision if step is not None and phase is step.root
                                else None)
            if phase.extra_attributes:  # user calls on the current span (the phase)
                attributes.update(phase.extra_attributes)
            if phase.renamed is not None:
                span.update_name(phase.renamed)
            span.set_attributes(attributes)
            add_link = getattr(span, "add_link", None)
            if add_link is not None:
                for link in phase.links:  # added by user code after the span started
                    add_link(link.context, link.attributes)
            for name, event_attributes, timestamp in phase.events or ():
                span.add_event(name, event_attributes, timestamp)
            if phase.status is not None:
                span.set_status(phase.status)
            span.end(end_time=phase.end_ns)
        except Exception as error:
            self.ledger.add(CALLBACK_ERROR, warning=(
                f"ending a phase span failed ({type(error).__name__}: {error})"))
            return False
        return span.is_recording() or phase.recording


class FlushHook(PassiveProcessor):
    """Placed first among the provider's span processors: flush and shutdown drain memspan's
    pending phases before the user's processors flush; spans of other instrumentations
    started inside a step mark that step (they must not lose their parent)."""

    def __init__(self, exporter: PhaseExporter) -> None:
        self._exporter = weakref.ref(exporter)

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        exporter = self._exporter()
        if exporter is not None and exporter.open_steps:
            context = span.get_span_context()
            exporter.note_span_started(context.trace_id)

    def on_end(self, span: ReadableSpan) -> None:
        return None

    def shutdown(self) -> None:
        exporter = self._exporter()
        if exporter is not None:
            exporter.drain()
            exporter.flush_waiting_steps()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        exporter = self._exporter()
        if exporter is not None:
            exporter.drain()
        return True
