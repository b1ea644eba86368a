"""The phase hot path: what entering and leaving a phase does on the caller's thread.

Entering: the name (validated once per distinct name), the parent from the OTel context,
ids from the provider's id generator and the provider's sampling decision, the fresh memory
figures, one :class:`~memspan.phases.record.PhaseSpan` made current (one context switch).
Leaving: the fresh figures again, the context restored, one append to the export buffer.
Everything else (the exported span, histograms, ring events, leak watch) happens on the
export worker (:mod:`memspan.phases.export`).

Invariants:

- Nesting never breaks the program. A phase that is not the innermost one where it closes
  (closed out of order, closed on another thread or in another context, or left open by a
  generator that was suspended or abandoned) still ends at its own exit with its own figures;
  the mis-nesting is counted (``phase_misnested``) and named on the span
  (``memspan.phase.misnested``), and the context of the closing code is left as it was.
  Phases opened later never take an ended phase, or a phase held open by a suspended
  generator, as their parent: they nest under the nearest phase still running.
- Recursion of any depth works: past ``MAX_DEPTH`` names the path stops growing
  (``memspan.phase.path_truncated``, counted) while ``memspan.phase.depth`` keeps counting.
- A trace-root phase starts a new trace with a link to the enclosing phase's span; under a
  span of another instrumentation (an HTTP request, say) it stays in that trace.
- A user exception always propagates unchanged; figures or telemetry that fail are counted,
  never raised.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
import time
from asyncio import CancelledError
from collections.abc import Mapping
from types import FrameType
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from memspan.drops import CALLBACK_ERROR, PHASE_MISNESTED, PHASE_PATH_TRUNCATED, DropLedger
from memspan.fork_safety import reset_in_forked_children
from memspan.names import PATH_SEPARATOR
from memspan.otel_internals import reset_context
from memspan.phases.export import PhaseExporter
from memspan.phases.figures import BoundaryReader, raised_by_user_code
from memspan.phases.record import PhaseSpan, StepTrace, exception_attributes
from memspan.phases.span_build import start_attributes
from memspan.phases.span_path import SpanPath, SpanPaths
from memspan.phases.validation import MAX_DEPTH, clean_attributes, validate_phase_name

_logger = logging.getLogger(__name__)

#: exceptions that end a phase without being an error (generator and iterator protocol)
NOT_ERRORS = (GeneratorExit, StopIteration, StopAsyncIteration)
_GENERATOR_FLAGS = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR
#: what ends a generator's phase when the generator is closed by its finalizer (asyncio
#: closes an abandoned async generator from its own task, by cancellation)
_FINALIZING = (GeneratorExit, CancelledError)
_EMPTY = Context()
_SPAN_KEY = next(iter(trace.set_span_in_context(trace.INVALID_SPAN, _EMPTY)))
_RANDOM = int(getattr(TraceFlags, "RANDOM_TRACE_ID", 0))
_MAX_NAMES = 4096
_OUT_OF_ORDER = "closed_out_of_order"



class PhaseWatcher(Protocol):
    """What must see a phase on the caller's thread, where the export worker is too late
    (the flight recorder: an OOM is answered before the exception leaves the phase, the
    allocator's OOM observer is attached before the first device OOM, and breadcrumbs are on
    disk before a SIGKILL). Every call is guarded: a watcher that raises is counted."""

    #: whether :meth:`phase_started` and :meth:`phase_closed` must run at every phase edge
    watches_starts: bool

    def phase_started(self, phase: PhaseSpan) -> None:
        """``phase`` is open and current."""

    def device_phase_seen(self) -> None:
        """A phase saw allocator figures for the first time in this session (called once)."""

    def phase_failed(self, phase: PhaseSpan, error: BaseException) -> None:
        """``error`` is leaving ``phase``, which has not ended yet."""

    def phase_closed(self, phase: PhaseSpan) -> None:
        """``phase`` has ended (its end time and exit figures are set) and is not exported
        yet; called only where :meth:`phase_started` is (``watches_starts``)."""


class PhaseCore:
    """Opens and closes phases for one tracker session (see the module docstring)."""

    def __init__(
        self,
        *,
        span_paths: SpanPaths,
        boundary: BoundaryReader,
        exporter: PhaseExporter,
        session_id: str,
        rank: int,
        ledger: DropLedger,
        trace_roots: frozenset[str] = frozenset(),
    ) -> None:
        self.span_paths = span_paths
        self._boundary = boundary
        self.exporter = exporter
        self.session_id = session_id
        self.rank = rank
        self.ledger = ledger
        self.trace_roots = trace_roots
        self._watcher: PhaseWatcher | None = None
        self._device_seen = True  # until a watcher wants to hear of it
        self._watch_starts = False
        self._key = otel_context.create_key("memspan-phase")
        self._sequence = itertools.count(1)
        self._names: dict[object, str] = {}
        #: phases with a lower sequence were opened by the parent of this forked process
        self._inherited_below = 0
        reset_in_forked_children(self)

    def watch(self, watcher: PhaseWatcher) -> None:
        """Let ``watcher`` see phases on the caller's thread (see :class:`PhaseWatcher`)."""
        self._watcher = watcher
        self._device_seen = False
        self._watch_starts = watcher.watches_starts

    def _after_fork_in_child(self) -> None:
        self._inherited_below = next(self._sequence)

    # -- reading the nesting ----------------------------------------------------------------------
    def in_trace_root(self) -> bool:
        """Whether a running phase of the current context started a trace (is in a step)."""
        phase = self.current()
        while phase is not None:
            if phase.trace_root:
                return True
            phase = phase.parent
        return False

    def current(self, context: Context | None = None) -> PhaseSpan | None:
        """The innermost phase still running in ``context`` (default: the current one)."""
        ctx = context if context is not None else otel_context.get_current()
        phase = ctx.get(self._key)
        while isinstance(phase, PhaseSpan) and _stale(phase):
            phase = phase.parent
        return phase if isinstance(phase, PhaseSpan) else None

    # -- entering -----------------------------------------------------------------------------------
    def open(self, name: str, attributes: Mapping[str, Any] | None = None,
             trace_root: bool | None = None, frame: FrameType | None = None,
             *, auto: bool = False, context: Context | None = None) -> PhaseSpan | None:
        """Open a phase; ``None`` when memspan itself failed (counted; the block still runs).

        A bad name or bad attributes raise (``ValueError``/``TypeError`` naming them): that is
        the caller's mistake, found before anything changed. ``context`` is the current
        context when the caller already read it.

        Auto phases (``auto=True``, from the torch hooks) never double the user's: one is not
        opened (``None``) where the innermost running phase has its name, and a user phase
        opened directly inside an auto phase of the same name takes its place (same span
        identity, so phases that already ended under it keep their parent); the auto phase
        is then never exported.
        """
        clean = self._names.get(name)
        if clean is None:
            clean = validate_phase_name(name)
            if len(self._names) < _MAX_NAMES:
                self._names[name] = clean
        user = clean_attributes(attributes, self.ledger) if attributes else None
        try:
            if auto:
                current = self.current()
                if current is not None and current.name == clean:
                    return None
            return self._open(clean, user, trace_root, frame, auto,
                              context if context is not None else otel_context.get_current())
        except Exception as failure:
            if raised_by_user_code(failure):
                raise  # a signal handler of the user's: its exception is the program's
            self.ledger.add(CALLBACK_ERROR, warning=(
                f"opening phase {clean!r} failed ({type(failure).__name__}: {failure}); "
                "the block runs without a phase"))
            return None

    def _open(self, clean: str, user: dict[str, Any] | None, trace_root: bool | None,
              frame: FrameType | None, auto: bool, ctx: Context) -> PhaseSpan:
        base = ctx
        span_path = self.span_paths.current
        if span_path.waiting:  # a global provider may have appeared: move to it now
            span_path = self.span_paths.follow_global_provider()
        parent: PhaseSpan | None = ctx.get(self._key)  # type: ignore[assignment]
        while parent is not None and _stale(parent):
            base = _before(parent, base)
            parent = parent.parent
        if (not auto and parent is not None and parent.auto and parent.name == clean
                and span_path.fast and base is ctx):
            return self._take_over(parent, user, frame, ctx)
        if parent is None:
            path: tuple[str, ...] = (clean,)
            path_text = clean
        elif parent.depth < MAX_DEPTH:
            path = (*parent.path, clean)
            path_text = parent.path_text + PATH_SEPARATOR + clean
        else:
            path, path_text = parent.path, parent.path_text
            self.ledger.add(PHASE_PATH_TRUNCATED, warning=(
                f"phases nest deeper than {MAX_DEPTH} levels (recursion?); paths stop growing "
                f"at {parent.path_text[-120:]!r}"))
        sequence = next(self._sequence)
        phase = PhaseSpan(clean, path, path_text, parent, f"{self.session_id}:{sequence}",
                          sequence, self.session_id, self.rank)
        if user:
            phase.attributes = user
        if auto:
            phase.auto = True
        if frame is not None and frame.f_code.co_flags & _GENERATOR_FLAGS:
            phase.gen_frame = frame
        outer = base.get(_SPAN_KEY)
        while type(outer) is PhaseSpan and _stale(outer):  # e.g. another tracker's phase
            base = _before(outer, base)
            outer = base.get(_SPAN_KEY)
        is_root = trace_root if trace_root is not None else clean in self.trace_roots
        if span_path.fast:
            self._start_span(span_path, phase, outer, base, is_root)
        else:  # the SDK span carries the phase; the phase stays what user code sees
            self._start_sdk_span(span_path, phase, outer, base, is_root)
        self._enter(phase, ctx)
        return phase

    def _take_over(self, auto_phase: PhaseSpan, user: dict[str, Any] | None,
                   frame: FrameType | None, ctx: Context) -> PhaseSpan:
        """A user phase in the place (and with the span identity) of an auto phase."""
        sequence = next(self._sequence)
        phase = PhaseSpan(auto_phase.name, auto_phase.path, auto_phase.path_text,
                          auto_phase.parent, f"{self.session_id}:{sequence}", sequence,
                          self.session_id, self.rank)
        if user:
            phase.attributes = user
        if frame is not None and frame.f_code.co_flags & _GENERATOR_FLAGS:
            phase.gen_frame = frame
        phase.span_context = auto_phase.span_context
        phase.parent_span_context = auto_phase.parent_span_context
        phase.links = auto_phase.links
        phase.recording = auto_phase.recording
        phase.sampling_attributes = auto_phase.sampling_attributes
        phase.outer_span = auto_phase.outer_span
        phase.trace_root = auto_phase.trace_root
        step = phase.step = auto_phase.step
        if step is not None and step.root is auto_phase:
            step.root = phase
        auto_phase.dissolved = True
        self._enter(phase, ctx)
        return phase

    def _enter(self, phase: PhaseSpan, ctx: Context) -> None:
        """Entry figures, start time, and the phase made current (the last step of opening)."""
        entry = phase.entry = self._boundary.entry()
        if entry.allocator is not None and not self._device_seen and self._watcher is not None:
            self._device_seen = True
            try:
                self._watcher.device_phase_seen()
            except Exception:
                self.ledger.add(CALLBACK_ERROR, warning="preparing the OOM observer failed")
        phase.start_ns = time.time_ns()
        values = dict(ctx)
        values[self._key] = phase
        values[_SPAN_KEY] = phase
        phase.context_token = otel_context.attach(Context(values))
        if self._watch_starts and self._watcher is not None:
            try:
                self._watcher.phase_started(phase)
            except Exception:
                self.ledger.add(CALLBACK_ERROR, warning="recording a phase start failed")

    def _span_parent(self, phase: PhaseSpan, outer: Any, is_root: bool
                     ) -> tuple[SpanContext | None, bool]:
        """The parent span context (None: a new trace) and whether the phase is a step root."""
        if type(outer) is PhaseSpan:
            outer_context = outer.span_context
        elif isinstance(outer, trace.Span):
            outer_context = outer.get_span_context()
            if outer_context.is_valid:
                phase.outer_span = outer
                is_root = False  # inside another instrumentation's trace: stay in it
        else:
            outer_context = trace.INVALID_SPAN_CONTEXT
        if is_root:
            if outer_context.is_valid:
                phase.links = (Link(outer_context),)
            return None, True
        return (outer_context if outer_context.is_valid else None), False

    def _start_span(self, span_path: SpanPath, phase: PhaseSpan, outer: Any, base: Context,
                    is_root: bool) -> None:
        parent_context, is_root = self._span_parent(phase, outer, is_root)
        ids = span_path.ids
        if parent_context is None:
            trace_id = ids.generate_trace_id()
            sampler_context = _EMPTY
            random_id = span_path.root_random
        else:
            trace_id = parent_context.trace_id
            sampler_context = base
            random_id = bool(parent_context.trace_flags & _RANDOM)
        if span_path.follows_parent:
            # The SDK's default sampler, decided as it would: a root is sampled, a child
            # follows its parent, the parent's trace state carries over.
            sampled = parent_context is None or parent_context.trace_flags.sampled
            trace_state = parent_context.trace_state if parent_context is not None else None
            recording = sampled
        else:
            result = span_path.sampler.should_sample(sampler_context, trace_id, phase.name,
                                                     SpanKind.INTERNAL,
                                                     phase.attributes or None, phase.links)
            sampled = result.decision.is_sampled()
            recording = result.decision.is_recording()
            trace_state = result.trace_state
            if result.attributes and result.attributes != phase.attributes:
                phase.sampling_attributes = result.attributes
        flags = TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT
        if random_id:
            flags |= _RANDOM
        phase.span_context = SpanContext(trace_id, ids.generate_span_id(), False,
                                         TraceFlags(flags), trace_state)
        phase.parent_span_context = parent_context
        phase.recording = recording
        self._place_in_step(phase, is_root)

    def _start_sdk_span(self, span_path: SpanPath, phase: PhaseSpan, outer: Any,
                        base: Context, is_root: bool) -> None:
        parent_context, is_root = self._span_parent(phase, outer, is_root)
        if is_root:
            phase.trace_root = True  # a start attribute
        span = span_path.tracer.start_span(
            phase.name, context=_EMPTY if parent_context is None else base,
            kind=SpanKind.INTERNAL, attributes=start_attributes(phase), links=phase.links,
        )
        phase.sdk_span = span
        if phase.links:
            phase.links = ()  # on the SDK span now; later ones are added to it at the end
        phase.span_context = span.get_span_context()
        phase.parent_span_context = parent_context
        phase.recording = span.is_recording()
        self._place_in_step(phase, is_root)

    def _place_in_step(self, phase: PhaseSpan, is_root: bool) -> None:
        if is_root:
            phase.trace_root = True
            step = StepTrace(phase)
            phase.step = step
            self.exporter.open_step(step)
        elif phase.parent is not None:
            phase.step = phase.parent.step

    # -- leaving ------------------------------------------------------------------------------------
    def close(self, phase: PhaseSpan, error: BaseException | None) -> None:
        """End ``phase`` (``error``: the exception leaving it). Raises only what a signal
        handler of the user's raised meanwhile, after the phase is fully closed."""
        if phase.end_ns:
            return
        theirs: Exception | None = None
        try:
            phase.exit = self._boundary.exit(phase.entry) if phase.entry is not None else None
        except Exception as failure:  # the reader counts its own failures; this is a bug guard
            if raised_by_user_code(failure):
                theirs = failure  # a signal handler of the user's: raised once the phase ended
            else:
                self.ledger.add(CALLBACK_ERROR,
                                warning=f"reading exit figures failed: {failure!r}")
        end_ns = time.time_ns()
        if error is not None and not isinstance(error, NOT_ERRORS):
            self._record_error(phase, error)
        self._restore_context(phase, unwinding=error is not None,
                              finalizing=isinstance(error, _FINALIZING)
                              and phase.gen_frame is not None)
        phase.end_ns = end_ns
        phase.closed = True
        if self._watch_starts and self._watcher is not None:
            try:
                self._watcher.phase_closed(phase)
            except Exception:
                self.ledger.add(CALLBACK_ERROR, warning="recording a phase end failed")
        if phase.gen_frame is not None:
            phase.gen_frame = None
        if phase.sequence >= self._inherited_below:  # else the parent process exports it
            paths = self.span_paths
            if paths.current.deferred:
                paths.recheck()  # a processor added meanwhile may need the span at once
            if phase.sdk_span is not None or not paths.current.deferred:
                self.exporter.deliver_span(phase, paths.current)  # on_end before exit returns
            self.exporter.submit(phase)
        if theirs is not None:
            raise theirs

    def _record_error(self, phase: PhaseSpan, error: BaseException) -> None:
        phase.error = type(error).__name__
        watcher = self._watcher
        if watcher is not None:
            try:
                watcher.phase_failed(phase, error)
            except Exception:
                self.ledger.add(CALLBACK_ERROR,
                                warning="the OOM handler raised; the OOM was not dumped")
        try:
            description = f"{type(error).__name__}: {error}"
        except Exception:
            description = type(error).__name__
        if phase.recording:
            phase.add_event("exception", exception_attributes(error, escaped=True))
            status = phase.status
            if status is None or status.status_code is not StatusCode.OK:  # OK is final
                phase.status = Status(StatusCode.ERROR, description)

    def _restore_context(self, phase: PhaseSpan, *, unwinding: bool,
                         finalizing: bool = False) -> None:
        """Put the context back as it was before ``phase`` opened, where that is safe.

        Closed out of order while an exception unwinds it, the phases left open inside are
        abandoned with it (their blocks were skipped by the exception): the context goes
        back to before ``phase``. Closed out of order otherwise, the phases inside keep
        running and the context is left alone. A phase of a generator that its finalizer
        closes elsewhere (``GeneratorExit`` after the consumer stopped iterating) simply ends.
        """
        token = phase.context_token
        ctx = otel_context.get_current()
        innermost = ctx.get(self._key)
        node = innermost
        while isinstance(node, PhaseSpan) and node is not phase and _stale(node):
            node = node.parent  # phases of suspended generators do not count as inside
        if node is not phase or token is None:
            if finalizing:
                return  # an abandoned generator closed by its finalizer: a normal end
            self._misnested(phase, innermost)
            if not (unwinding and token is not None and phase.misnested == _OUT_OF_ORDER):
                return
        try:
            reset_context(token)
        except (ValueError, RuntimeError):
            if not finalizing:
                self._misnested(phase, None)
            return
        restored = otel_context.get_current()
        below = restored.get(self._key)
        if isinstance(below, PhaseSpan) and below.end_ns:  # closed out of order earlier
            target = restored
            while isinstance(below, PhaseSpan) and below.end_ns:
                target = _before(below, target)
                below = below.parent
            otel_context.attach(target)

    def _misnested(self, phase: PhaseSpan, innermost: object) -> None:
        if type(innermost) is PhaseSpan and _has_ancestor(innermost, phase):
            reason = _OUT_OF_ORDER
        elif phase.thread is not threading.current_thread():
            reason = "closed_on_another_thread"
        else:
            reason = "closed_in_another_context"
        phase.misnested = reason
        self.ledger.add(PHASE_MISNESTED, warning=(
            f"phase {phase.path_text!r} was not the innermost open phase where it closed "
            f"({reason.replace('_', ' ')}); it was ended with its own figures and flagged"))

def _stale(phase: PhaseSpan) -> bool:
    """Ended, or held open by a generator that is not running (suspended or abandoned)."""
    if phase.end_ns:
        return True
    frame = phase.gen_frame
    return frame is not None and frame.f_back is None


def _before(phase: PhaseSpan, fallback: Context) -> Context:
    """The context that was current just before ``phase`` opened."""
    token = phase.context_token
    if token is None:
        return fallback
    old = token.old_value
    return old if isinstance(old, Context) else _EMPTY


def _has_ancestor(phase: PhaseSpan, ancestor: PhaseSpan) -> bool:
    node = phase.parent
    while node is not None:
        if node is ancestor:
            return True
        node = node.parent
    return False

