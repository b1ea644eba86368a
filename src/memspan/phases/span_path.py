"""Which way phase spans reach the provider: built by memspan, or ordinary SDK spans.

Three modes, one contract: a span processor that may observe a span as soon as it ends has
it in ``on_end`` before the phase's exit returns (the specification's synchronous ``OnEnd``).

- ``deferred``: only where every span processor just queues spans (the SDK's
  ``BatchSpanProcessor`` or memspan's own): the caller's thread makes a
  :class:`~memspan.phases.record.PhaseSpan` current with a real ``SpanContext`` (the
  provider's id generator and sampler decide); the export worker builds the finished
  ``ReadableSpan``s in batches and hands them to ``on_end``. Nobody can tell: a batch
  processor exports later anyway, and ``force_flush``/``shutdown`` deliver everything first.
- ``sync``: the same span, built and handed to ``on_end`` at the phase's exit, on the
  caller's thread: chosen when any processor is synchronous or unknown
  (``SimpleSpanProcessor``, a user's processor), or when ``MEMSPAN_SPAN_MODE=sync``.
- ``sdk``: an ordinary SDK span started at the phase's entry and ended at its exit through
  the tracer (``on_start`` runs, the SDK's own span metrics count it).

Histograms, ring events and the leak watch run on the export worker on every path.

Invariant: ``deferred`` and ``sync`` are chosen only when everything they rely on is reachable
on the tracer the provider gave us (``sampler``, ``id_generator``, ``span_processor``,
``resource``, span limits, instrumentation scope, and the ``ReadableSpan`` constructor's keyword
arguments) and no span processor does work in ``on_start`` or ``_on_ending`` (those hooks
would never run for a span built by hand). Otherwise the mode is ``sdk`` and the reason is
logged at DEBUG level once.

A :class:`SpanPath` is immutable and carries what the hot path reads (sampler, id generator,
whether the sampler's decision can be taken without calling it); :class:`SpanPaths` holds the
current one for a tracker and replaces it as one reference when the provider's processors
change or a global provider appears, so a caller's thread always reads one consistent path.
Every private SDK attribute involved is read through :mod:`memspan.otel_internals`.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased

from memspan import otel_internals

_logger = logging.getLogger(__name__)

DEFERRED = "deferred"
SYNC = "sync"
SDK = "sdk"
MODES = (DEFERRED, SYNC, SDK)


class PassiveProcessor(SpanProcessor):
    """Marks span processors of memspan's own whose ``on_start``/``_on_ending`` do nothing."""


class BatchingProcessor:
    """Marks memspan's own batch processors: ``on_end`` only queues the span (as the SDK's
    ``BatchSpanProcessor`` does), so when it runs cannot be observed before a flush."""


_PASSIVE_ON_START = {SpanProcessor.on_start, SimpleSpanProcessor.on_start,
                     BatchSpanProcessor.on_start}
_PASSIVE_ON_ENDING = {otel_internals.on_ending_hook(cls)
                      for cls in (SpanProcessor, SimpleSpanProcessor, BatchSpanProcessor)}


@dataclass(frozen=True)
class SpanPath:
    """The tracer a tracker builds phase spans with, how, and what the hot path reads of it."""

    mode: str
    reason: str
    tracer: trace.Tracer
    #: the SDK tracer (``deferred``/``sync`` only): sampler, ids, processors, resource, limits
    sdk_tracer: Any = None
    #: spans built by memspan (``deferred``/``sync``), not ordinary SDK spans
    fast: bool = field(init=False)
    sync: bool = field(init=False)
    #: spans are built later, on the export worker (no processor can tell)
    deferred: bool = field(init=False)
    #: a proxy tracer with no global provider behind it yet
    waiting: bool = field(init=False)
    sampler: Any = field(init=False, default=None)
    ids: Any = field(init=False, default=None)
    #: the sampler is the SDK's default, so its decision is taken without the call
    follows_parent: bool = field(init=False, default=False)
    #: root trace ids are random (W3C ``random`` trace flag)
    root_random: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "fast", self.mode != SDK)
        put(self, "sync", self.mode == SYNC)
        put(self, "deferred", self.mode == DEFERRED)
        put(self, "waiting", waits_for_provider(self.tracer))
        sdk = self.sdk_tracer
        if sdk is not None:
            put(self, "sampler", sdk.sampler)
            put(self, "follows_parent", follows_parent(sdk.sampler))
            put(self, "ids", sdk.id_generator)
            random_ids = getattr(sdk.id_generator, "is_trace_id_random", None)
            put(self, "root_random", bool(random_ids()) if random_ids is not None else False)

    @property
    def limits(self) -> SpanLimits:
        limits: SpanLimits = otel_internals.span_limits(self.sdk_tracer)
        return limits


def follows_parent(sampler: Any) -> bool:
    """Whether ``sampler`` is the SDK's default ``ParentBased(ALWAYS_ON)`` (exact type and
    delegates), whose decision the hot path can take without the call: a root is sampled, a
    child does what its parent did. Any other sampler is always called."""
    if type(sampler) is not ParentBased:
        return False
    return otel_internals.parent_based_delegates(sampler) == (
        ALWAYS_ON, ALWAYS_ON, ALWAYS_OFF, ALWAYS_ON, ALWAYS_OFF)


def real_tracer(tracer: trace.Tracer) -> trace.Tracer:
    """The tracer behind a proxy, once a global provider is set (else the proxy itself)."""
    if isinstance(tracer, trace.ProxyTracer):
        inner = otel_internals.proxy_target(tracer)
        if inner is not None:
            return inner
    return tracer


def waits_for_provider(tracer: trace.Tracer) -> bool:
    """A proxy tracer while no global provider is set yet (phases are no-op spans until one
    is: the tracker then moves to the real provider)."""
    return isinstance(tracer, trace.ProxyTracer) and real_tracer(tracer) is tracer


def processors(processor: Any) -> Iterator[Any]:
    """Every leaf span processor under a (possibly nested) multi-processor."""
    children = otel_internals.child_processors(processor)
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
        if otel_internals.on_ending_hook(kind) not in _PASSIVE_ON_ENDING:
            return f"span processor {kind.__qualname__} does work in _on_ending"
    return None


def synchronous_processor(span_processor: Any) -> str | None:
    """The first processor whose ``on_end`` may be observed at once (a
    ``SimpleSpanProcessor``, a user's processor, anything not known to only queue), or None
    when every processor only queues (the SDK's ``BatchSpanProcessor``, unchanged, or one of
    memspan's own)."""
    for leaf in processors(span_processor):
        if isinstance(leaf, (PassiveProcessor, BatchingProcessor)):
            continue
        if isinstance(leaf, BatchSpanProcessor) and type(leaf).on_end is BatchSpanProcessor.on_end:
            continue
        return type(leaf).__qualname__
    return None


_READABLE_SPAN_PROBLEM = otel_internals.readable_span_problem()


def resolve(tracer: trace.Tracer, requested: str) -> SpanPath:
    """The span path for ``tracer``: ``requested`` where possible, else ``sdk`` with a reason."""
    if requested not in MODES:
        raise ValueError(f"span_mode={requested!r} is not one of {', '.join(MODES)}")
    if requested == SDK:
        return SpanPath(SDK, "requested", tracer)
    inner = real_tracer(tracer)
    problem = _READABLE_SPAN_PROBLEM
    if problem is None:
        missing = otel_internals.missing_tracer_attributes(inner)
        if missing:
            problem = (f"the tracer ({type(inner).__module__}.{type(inner).__qualname__}) is "
                       f"not the OpenTelemetry SDK's (no {', '.join(missing)})")
    if problem is None and not otel_internals.tracer_enabled(inner):
        problem = "the tracer is disabled by the provider's tracer configurator"
    if problem is None:
        problem = active_processor_problem(inner.span_processor)  # type: ignore[attr-defined]
    if problem is not None:
        path = SpanPath(SDK, problem, tracer)
    elif requested == SYNC:
        path = SpanPath(SYNC, "requested", tracer, inner)
    else:
        synchronous = synchronous_processor(inner.span_processor)  # type: ignore[attr-defined]
        if synchronous is not None:
            path = SpanPath(SYNC, f"span processor {synchronous} may observe a span as soon as "
                                  "it ends: spans are handed to it at the phase's exit",
                            tracer, inner)
        else:
            path = SpanPath(DEFERRED, "every span processor only queues spans", tracer, inner)
    _logger.debug("memspan: phase spans use the %s path (%s)", path.mode, path.reason)
    return path


class SpanPaths:
    """The current span path of one tracker, re-chosen when what it depends on changes.

    ``current`` is read by the caller's thread (once per phase) and the export worker; it is
    only ever replaced as a whole. Processors memspan installs on every provider it uses
    (``hooks``: the flush hook) are placed first among that provider's processors, once.
    """

    def __init__(self, tracer: trace.Tracer, requested: str) -> None:
        self.tracer = tracer
        self.requested = requested
        self.current = resolve(tracer, requested)
        self._hooks: list[SpanProcessor] = []
        self._hooked: weakref.WeakSet[Any] = weakref.WeakSet()
        self._processors_seen: object = self._processor_tuple(self.current)

    def install(self, hook: SpanProcessor) -> None:
        """Place ``hook`` first among the processors of the provider in use now and of every
        provider the paths move to later."""
        self._hooks.append(hook)
        self._hook_provider(self.current)
        self._processors_seen = self._processor_tuple(self.current)

    def use(self, path: SpanPath) -> None:
        """Make ``path`` current (phases already open keep theirs)."""
        if path.mode != self.current.mode:
            _logger.debug("memspan: phase spans now use the %s path (%s)", path.mode,
                          path.reason)
        self._hook_provider(path)
        self._processors_seen = self._processor_tuple(path)
        self.current = path

    def follow_global_provider(self) -> SpanPath:
        """A global provider was set after the tracker was built on the proxy: build phase
        spans for it from now on (and hook its flush and shutdown)."""
        path = self.current
        if path.waiting and not waits_for_provider(path.tracer):
            self.use(resolve(self.tracer, self.requested))
        return self.current

    def recheck(self) -> None:
        """Processors added to the provider since the path was chosen (one with ``on_start``
        work, say) switch new phases to the path that suits them."""
        current = self._processor_tuple(self.current)
        if current is None or current is self._processors_seen:
            return
        self._processors_seen = current
        self.use(resolve(self.tracer, self.requested))

    @staticmethod
    def _sdk_tracer(path: SpanPath) -> Any:
        return path.sdk_tracer or real_tracer(path.tracer)

    def _processor_tuple(self, path: SpanPath) -> object:
        multi = getattr(self._sdk_tracer(path), "span_processor", None)
        return otel_internals.child_processors(multi) if multi is not None else None

    def _hook_provider(self, path: SpanPath) -> None:
        sdk = self._sdk_tracer(path)
        multi = getattr(sdk, "span_processor", None)
        if multi is None or not self._hooks or multi in self._hooked:
            return
        self._hooked.add(multi)
        for hook in reversed(self._hooks):
            try:
                if not otel_internals.prepend_span_processor(multi, hook):
                    multi.add_span_processor(hook)
            except Exception as error:
                _logger.debug("memspan: flush hook not installed (%s); call memspan.shutdown() "
                              "before the provider's", error)
