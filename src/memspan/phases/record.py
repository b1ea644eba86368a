"""The one record of a phase (its place in the nesting, its OTel span, its figures), and the
step trace it may belong to.

A :class:`PhaseSpan` is created when a phase opens and is what the OpenTelemetry context
holds while it is open, so ``trace.get_current_span()`` inside a phase returns it, spans of
other instrumentations take it as their parent, and ``set_attribute``/``add_event``/
``record_exception``/``set_status`` on it land in the exported span. It is deliberately not
an SDK span: it stores what callers give it and nothing else, and the exported
``ReadableSpan`` is built from it later, off the caller's thread
(:mod:`memspan.phases.export`).

Invariants:

- It is written by the thread that owns the phase until the phase ends (``end_ns`` set), and
  read by the export worker only after it was handed over; user calls arriving after the
  end are ignored, as an ended SDK span ignores them.
- A non-recording phase (the provider's sampler dropped it) still carries a valid
  ``SpanContext``, nesting and figures; it is never exported, but it still counts in the
  histograms and the flight recorder.
- Figures a source could not measure are ``None`` (absent from the span), never zero.
- Bounded: at most ``MAX_RECORDED`` attributes set through the span, events (the newest)
  and links are kept while it is open, whatever user code does with the current span.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import deque
from collections.abc import Mapping, Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, Status, StatusCode
from opentelemetry.util.types import Attributes, AttributeValue

from memspan import names

if TYPE_CHECKING:
    from contextvars import Token

    from memspan.phases.figures import EntryFigures, ExitFigures

#: an event as recorded on the caller's thread: (name, attributes, time in ns)
RawEvent = tuple[str, Mapping[str, AttributeValue], int]
#: the most attributes, events and links one phase span records on the caller's thread (the
#: provider's span limits, 128 each by default, apply when the span is built)
MAX_RECORDED = 1024


class _Nesting:
    """The slotted fields of a phase's place in the nesting (first base: fixed layout)."""

    __slots__ = ("attributes", "closed", "context_token", "depth", "name", "parent", "path",
                 "path_text", "rank", "scope_id", "sequence", "session_id", "thread",
                 "thread_id")

    attributes: Mapping[str, Any]
    closed: bool
    context_token: Token[Context] | None
    depth: int
    name: str
    path: tuple[str, ...]
    path_text: str
    rank: int
    scope_id: str
    sequence: int
    session_id: str
    thread: threading.Thread
    thread_id: int


class PhaseSpan(_Nesting, trace.Span):
    """One phase from entry to export (see the module docstring)."""

    # Fields every phase sets are slots; fields most phases never set are class-level
    # defaults, written (into a lazily created instance dict) only when they differ.
    __slots__ = (
        "__dict__",
        "end_ns",
        "entry",
        "exit",
        "parent_span_context",
        "recording",
        "span_context",
        "start_ns",
        "step",
    )

    parent: PhaseSpan | None

    #: the span that was current when the phase opened, when it is another instrumentation's
    outer_span: trace.Span | None = None
    links: Sequence[Link] = ()
    trace_root = False
    sampling_attributes: Attributes = None
    #: the ordinary SDK span of this phase (``sdk`` span path only)
    sdk_span: trace.Span | None = None
    #: the span was handed to the processors at the phase's exit (``sync``/``sdk`` paths);
    #: ``span_exported``: whether a recording span reached them
    span_delivered = False
    span_exported = False
    extra_attributes: dict[str, AttributeValue] | None = None
    #: the span's name when user code renamed the current span (``update_name``)
    renamed: str | None = None
    events: deque[RawEvent] | None = None
    status: Status | None = None
    error: str | None = None
    oom = False
    misnested: str | None = None
    #: opened by auto-instrumentation (torch hooks), not by the user's code
    auto = False
    #: an auto phase whose place a user phase of the same name took: never exported
    dissolved = False
    #: the generator frame that opened the phase, while it is open
    gen_frame: FrameType | None = None

    def __init__(self, name: str, path: tuple[str, ...], path_text: str,
                 parent: PhaseSpan | None, scope_id: str, sequence: int, session_id: str,
                 rank: int) -> None:
        # the place in the nesting
        self.name = name
        self.path = path
        self.path_text = path_text
        self.depth = parent.depth + 1 if parent is not None else 1
        self.parent = parent
        self.scope_id = scope_id
        self.sequence = sequence
        self.session_id = session_id
        self.rank = rank
        self.thread = thread = threading.current_thread()
        self.thread_id = thread.ident or 0
        self.closed = False
        #: the phase's user attributes, already cleaned to OTel types (empty when none)
        self.attributes = _NO_ATTRIBUTES
        self.context_token = None
        # the span and the figures
        self.span_context: SpanContext = trace.INVALID_SPAN_CONTEXT
        self.parent_span_context: SpanContext | None = None
        self.recording = False
        self.step: StepTrace | None = None
        self.start_ns = 0
        self.end_ns = 0
        self.entry: EntryFigures | None = None
        self.exit: ExitFigures | None = None

    # -- opentelemetry.trace.Span ------------------------------------------------------------
    def get_span_context(self) -> SpanContext:
        return self.span_context

    def is_recording(self) -> bool:
        return self.recording and not self.end_ns

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if not self.recording or self.end_ns:
            return
        extra = self.extra_attributes
        if extra is None:
            extra = self.extra_attributes = {}
        if len(extra) >= MAX_RECORDED and key not in extra:
            return  # bounded on the caller's thread; the provider's limits apply at export
        extra[key] = value

    def add_event(self, name: str, attributes: Attributes = None,
                  timestamp: int | None = None) -> None:
        if not self.recording or self.end_ns:
            return
        self._append_event((name, dict(attributes) if attributes else {},
                            timestamp if timestamp is not None else time.time_ns()))

    def add_late_event(self, name: str, attributes: Mapping[str, AttributeValue]) -> None:
        """An event found after the phase ended (export worker, before the span is built)."""
        self._append_event((name, dict(attributes), self.end_ns or time.time_ns()))

    def _append_event(self, event: RawEvent) -> None:
        events = self.events
        if events is None:
            events = self.events = deque(maxlen=MAX_RECORDED)  # the newest are kept, as the SDK
        events.append(event)

    def add_link(self, context: SpanContext, attributes: Attributes = None) -> None:
        if not self.recording or self.end_ns or not context.is_valid:
            return
        if len(self.links) < MAX_RECORDED:
            self.links = (*self.links, Link(context, attributes))

    def update_name(self, name: str) -> None:
        """Rename the exported span (``trace.get_current_span().update_name(...)``); the
        phase keeps its name as ``memspan.phase.name`` and in paths, metrics and verdicts,
        which are its identity."""
        if self.recording and not self.end_ns and isinstance(name, str):
            self.renamed = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if not self.recording or self.end_ns:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        if self.status is not None and self.status.status_code is StatusCode.OK:
            return  # OK is final, as in the SDK
        self.status = status

    def record_exception(self, exception: BaseException, attributes: Attributes = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        if not self.recording or self.end_ns:
            return
        self.add_event("exception", exception_attributes(exception, attributes, escaped),
                       timestamp)

    def end(self, end_time: int | None = None) -> None:
        """Ignored: a phase ends when its block or handle closes, with its own figures."""

    def __enter__(self) -> PhaseSpan:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """``with span:`` on a phase span neither ends it nor records anything."""

    def describe(self) -> str:
        return f"phase {self.path_text!r} (scope {self.scope_id})"

    def __repr__(self) -> str:
        state = "open" if not self.end_ns else "ended"
        return f"<PhaseSpan {self.path_text!r} scope={self.scope_id} {state}>"


_NO_ATTRIBUTES: Mapping[str, Any] = {}


class StepTrace:
    """One step trace (the phases under one trace-root phase) while it is open or waiting
    for its decision (:mod:`memspan.phases.step_sampling` decides it)."""

    __slots__ = ("buffered", "decision", "foreign", "root")

    def __init__(self, root: PhaseSpan) -> None:
        self.root = root
        #: phases of this step that ended before its root, waiting for the decision
        self.buffered: list[PhaseSpan] = []
        #: set by the export worker from another instrumentation's span in this trace
        self.foreign = False
        #: the keep reason once decided ("dropped" when dropped), else None
        self.decision: str | None = None


def exception_attributes(exception: BaseException, attributes: Attributes = None,
                         escaped: bool = False) -> dict[str, AttributeValue]:
    """The semconv ``exception`` event attributes, as the SDK writes them."""
    try:
        message = str(exception)
    except Exception:
        message = f"<{type(exception).__name__}: str() failed>"
    try:
        stacktrace = "".join(traceback.format_exception(
            type(exception), exception, exception.__traceback__))
    except Exception:
        stacktrace = ""
    kind = type(exception)
    module = kind.__module__
    out: dict[str, AttributeValue] = {
        names.EXCEPTION_TYPE: (f"{module}.{kind.__qualname__}"
                               if module and module != "builtins" else kind.__qualname__),
        names.EXCEPTION_MESSAGE: message,
        names.EXCEPTION_STACKTRACE: stacktrace,
        names.EXCEPTION_ESCAPED: str(escaped),
    }
    if attributes:
        out.update(attributes)
    return out
