"""Which way phase spans reach the provider: built off the caller's thread, or ordinary SDK spans.

Three modes:

- ``deferred`` (the default where possible): the caller's thread only makes a
  :class:`~memspan.phases.record.PhaseSpan` current with a real ``SpanContext`` (the provider's id
  generator and sampler decide ids and sampling); the finished ``ReadableSpan`` is built later,
  in batches, by the export worker and handed to the provider's span processors' ``on_end``.
- ``sync``: the same span, built and handed to ``on_end`` at the phase's exit, on the
  caller's thread (strict conformance: an exporter sees the span as soon as the phase ends).
- ``sdk``: an ordinary SDK span started and ended through the tracer (``on_start`` runs, the
  SDK's own span metrics count it).

Invariant: ``deferred`` and ``sync`` are chosen only when everything they rely on is reachable
on the tracer the provider gave us (``sampler``, ``id_generator``, ``span_processor``,
``resource``, span limits, instrumentation scope, and the ``ReadableSpan`` constructor's keyword
arguments) and no span processor does work in ``on_start`` or ``_on_ending`` (those hooks
would never run for a span built by hand). Otherwise the mode is ``sdk`` and the reason is
logged at DEBUG level once.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

_logger = logging.getLogger(__name__)

DEFERRED = "deferred"
SYNC = "sync"
SDK = "sdk"
MODES = (DEFERRED, SYNC, SDK)

_READABLE_SPAN_ARGUMENTS = ("name", "context", "parent", "resource", "attributes", "events",
                            "links", "kind", "instrumentation_info", "status", "start_time",
                            "end_time", "instrumentation_scope")
_TRACER_ATTRIBUTES = ("sampler", "id_generator", "span_processor", "resource",
                      "instrumentation_info", "_span_limits", "_instrumentation_scope")


class PassiveProcessor(SpanProcessor):
    """Marks span processors of memspan's own whose ``on_start``/``_on_ending`` do nothing."""


_PASSIVE_ON_START = {SpanProcessor.on_start, SimpleSpanProcessor.on_start,
                     BatchSpanProcessor.on_start}
_PASSIVE_ON_ENDING = {getattr(cls, "_on_ending", None)
                      for cls in (SpanProcessor, SimpleSpanProcessor, BatchSpanProcessor)}


@dataclass(frozen=True)
class SpanPath:
    """The tracer a tracker builds phase spans with, and how."""

    mode: str
    reason: str
    tracer: trace.Tracer
    #: the SDK tracer (``deferred``/``sync`` only): sampler, ids, processors, resource, limits
    sdk_tracer: Any = None

    @property
    def limits(self) -> SpanLimits:
        limits: SpanLimits = self.sdk_tracer._span_limits
        return limits


def real_tracer(tracer: trace.Tracer) -> trace.Tracer:
    """The tracer behind a proxy, once a global provider is set (else the proxy itself)."""
    if isinstance(tracer, trace.ProxyTracer):
        inner = getattr(tracer, "_tracer", None)  # resolves once a global provider is set
        if inner is not None and not isinstance(inner, trace.NoOpTracer):
            return inner  # type: ignore[no-any-return]
    return tracer


def waits_for_provider(tracer: trace.Tracer) -> bool:
    """A proxy tracer while no global provider is set yet (phases are no-op spans until one
    is: the tracker then moves to the real provider)."""
    return isinstance(tracer, trace.ProxyTracer) and real_tracer(tracer) is tracer


def processors(processor: Any) -> Iterator[Any]:
    """Every leaf span processor under a (possibly nested) multi-processor."""
    children = getattr(processor, "_span_processors", None)
    if children is None:
        yield processor
        return
    for child in children:
        yield from processors(child)


def active_processor_problem(span_processor: Any) -> str | None:
    """Why hand-built spans would skip work a processor does, or None when they would not."""
    for leaf in processors(span_processor):
        kind = type(leaf)
        if isinstance(leaf, PassiveProcessor):
            continue
        if kind.on_start not in _PASSIVE_ON_START:
            return f"span processor {kind.__qualname__} does work in on_start"
        if getattr(kind, "_on_ending", None) not in _PASSIVE_ON_ENDING:
            return f"span processor {kind.__qualname__} does work in _on_ending"
    return None


def _readable_span_problem() -> str | None:
    try:
        parameters = inspect.signature(ReadableSpan.__init__).parameters
    except (TypeError, ValueError):
        return "ReadableSpan's constructor cannot be inspected"
    missing = [name for name in _READABLE_SPAN_ARGUMENTS if name not in parameters]
    if missing:
        return f"ReadableSpan's constructor lacks {', '.join(missing)}"
    return None


_READABLE_SPAN_PROBLEM = _readable_span_problem()


def resolve(tracer: trace.Tracer, requested: str) -> SpanPath:
    """The span path for ``tracer``: ``requested`` where possible, else ``sdk`` with a reason."""
    if requested not in MODES:
        raise ValueError(f"span_mode={requested!r} is not one of {', '.join(MODES)}")
    if requested == SDK:
        return SpanPath(SDK, "requested", tracer)
    inner = real_tracer(tracer)
    problem = _READABLE_SPAN_PROBLEM
    if problem is None:
        missing = [name for name in _TRACER_ATTRIBUTES if not hasattr(inner, name)]
        if missing:
            problem = (f"the tracer ({type(inner).__module__}.{type(inner).__qualname__}) is "
                       f"not the OpenTelemetry SDK's (no {', '.join(missing)})")
    if problem is None and not getattr(inner, "_is_enabled", lambda: True)():
        problem = "the tracer is disabled by the provider's tracer configurator"
    if problem is None:
        problem = active_processor_problem(inner.span_processor)  # type: ignore[attr-defined]
    if problem is not None:
        path = SpanPath(SDK, problem, tracer)
    else:
        path = SpanPath(requested, "the SDK's tracer internals are reachable", tracer, inner)
    _logger.debug("memspan: phase spans use the %s path (%s)", path.mode, path.reason)
    return path
