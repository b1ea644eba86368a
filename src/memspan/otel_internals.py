"""Every private OpenTelemetry attribute memspan reads or writes, one accessor each.

The OpenTelemetry Python SDK has no public way to do some things memspan needs (put a
processor first, see a batch processor's queue, build a span by hand within the provider's
limits). Each such access lives here and nowhere else, so an SDK release that renames one
changes one function, and ``tests/integration/test_sdk_versions.py`` runs every accessor
against the oldest SDK the package allows and the newest (``internals_report``).

Invariant: no accessor raises because an attribute is missing or has another shape. Each
returns a documented fallback (``None``, an empty tuple, ``False``), and its docstring says
what memspan does then: the caller degrades to a public path, never to a wrong answer.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sized
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

#: the tracer attributes hand-built spans need; the private ones are read through the
#: accessors below (``span_limits``, ``instrumentation_scope``)
SDK_TRACER_ATTRIBUTES = ("sampler", "id_generator", "span_processor", "resource",
                         "instrumentation_info", "_span_limits", "_instrumentation_scope")
#: ``ReadableSpan``'s constructor keywords a hand-built span passes
READABLE_SPAN_ARGUMENTS = ("name", "context", "parent", "resource", "attributes", "events",
                           "links", "kind", "instrumentation_info", "status", "start_time",
                           "end_time", "instrumentation_scope")


# -- tracers and span processors --------------------------------------------------------------
def missing_tracer_attributes(tracer: object) -> list[str]:
    """The attributes of ``SDK_TRACER_ATTRIBUTES`` ``tracer`` lacks ([] for the SDK's tracer).
    Any missing: phases are ordinary SDK spans (the ``sdk`` path)."""
    return [name for name in SDK_TRACER_ATTRIBUTES if not hasattr(tracer, name)]


def readable_span_problem() -> str | None:
    """Why ``ReadableSpan`` cannot be built by hand with ``READABLE_SPAN_ARGUMENTS`` (None when
    it can). A problem: phases are ordinary SDK spans."""
    try:
        parameters = inspect.signature(ReadableSpan.__init__).parameters
    except (TypeError, ValueError):
        return "ReadableSpan's constructor cannot be inspected"
    missing = [name for name in READABLE_SPAN_ARGUMENTS if name not in parameters]
    if missing:
        return f"ReadableSpan's constructor lacks {', '.join(missing)}"
    return None


def span_limits(tracer: Any) -> Any:
    """The SDK tracer's ``SpanLimits`` (``_span_limits``). Checked present by
    ``missing_tracer_attributes`` before a hand-built path is chosen."""
    return tracer._span_limits


def instrumentation_scope(tracer: Any) -> Any:
    """The SDK tracer's ``InstrumentationScope`` (``_instrumentation_scope``); checked present
    as ``span_limits`` is."""
    return tracer._instrumentation_scope


def tracer_enabled(tracer: object) -> bool:
    """Whether the provider's tracer configurator left ``tracer`` enabled (``_is_enabled``,
    SDK 1.39+). Absent: True (older SDKs have no configurator)."""
    is_enabled = getattr(tracer, "_is_enabled", None)
    if is_enabled is None:
        return True
    try:
        return bool(is_enabled())
    except Exception:
        return True


def proxy_target(tracer: trace.Tracer) -> trace.Tracer | None:
    """The tracer a ``ProxyTracer`` delegates to once a global provider is set (``_tracer``);
    None while there is none, or where the proxy keeps it elsewhere (then memspan treats the
    proxy as its tracer: phases take the ``sdk`` path through it, still correct)."""
    inner = getattr(tracer, "_tracer", None)
    if inner is None or isinstance(inner, trace.NoOpTracer):
        return None
    return inner  # type: ignore[no-any-return]


def child_processors(processor: object) -> tuple[Any, ...] | None:
    """The processors of a multi span processor (``_span_processors``), None for a leaf or
    an SDK that names it otherwise (a leaf is then judged by its own class)."""
    children = getattr(processor, "_span_processors", None)
    return children if isinstance(children, tuple) else None


def provider_span_processor(provider: object) -> Any:
    """A tracer provider's multi span processor (``_active_span_processor``), None when absent
    (the start-up line then names no span destinations)."""
    return getattr(provider, "_active_span_processor", None)


def prepend_span_processor(multi: Any, processor: Any) -> bool:
    """Put ``processor`` first among a multi processor's (``_lock``, ``_span_processors``,
    under the SDK's own lock), so its ``force_flush``/``shutdown`` run before the others'.
    False where the shape differs: the caller appends it through the public
    ``add_span_processor`` (pending phases then reach the user's processors one flush later)."""
    lock = getattr(multi, "_lock", None)
    if lock is None or child_processors(multi) is None:
        return False
    with lock:
        multi._span_processors = (processor, *multi._span_processors)
    return True


def on_ending_hook(kind: type) -> object:
    """A span processor class's ``_on_ending`` hook (SDK 1.37+), None where the SDK has none.
    A class whose hook differs from the SDK processors' does work that hand-built spans
    would skip: phases then take the ``sdk`` path."""
    return getattr(kind, "_on_ending", None)


def batch_queue(processor: object) -> tuple[Sized, int] | None:
    """A ``BatchSpanProcessor``'s queue and its bound (``_batch_processor._queue``,
    ``_max_queue_size``); None where the SDK keeps them otherwise: queue-full drops are then
    not counted by memspan (one warning says so; the SDK's own counter still counts them)."""
    inner = getattr(processor, "_batch_processor", None)
    queue = getattr(inner, "_queue", None)
    limit = getattr(inner, "_max_queue_size", None)
    if isinstance(queue, Sized) and isinstance(limit, int):
        return queue, limit
    return None


def span_exporter_of(processor: object) -> Any:
    """The exporter behind a simple or batch span processor (``span_exporter``, else
    ``_batch_processor._exporter``); None when unknown (the processor is named instead)."""
    exporter = getattr(processor, "span_exporter", None)
    if exporter is None:
        exporter = getattr(getattr(processor, "_batch_processor", None), "_exporter", None)
    return exporter


# -- samplers ---------------------------------------------------------------------------------
def parent_based_delegates(sampler: object) -> tuple[object, ...] | None:
    """A ``ParentBased`` sampler's five delegates (``_root``, ``_remote_parent_sampled``,
    ``_remote_parent_not_sampled``, ``_local_parent_sampled``, ``_local_parent_not_sampled``);
    None where any is missing: the sampler is then always called, never short-cut."""
    names = ("_root", "_remote_parent_sampled", "_remote_parent_not_sampled",
             "_local_parent_sampled", "_local_parent_not_sampled")
    delegates = tuple(getattr(sampler, name, None) for name in names)
    return None if any(delegate is None for delegate in delegates) else delegates


# -- metrics ----------------------------------------------------------------------------------
def metric_readers(provider: object) -> tuple[Any, ...] | None:
    """A meter provider's readers (``_metric_readers``), None when absent (the start-up line
    then names no metric destinations)."""
    readers = getattr(provider, "_metric_readers", None)
    return tuple(readers) if readers is not None else None


def metric_exporter_of(reader: object) -> Any:
    """The exporter behind a periodic reader (``_exporter``), None when unknown."""
    return getattr(reader, "_exporter", None)


def is_proxy_meter_provider(provider: object) -> bool:
    """Whether ``provider`` is the API's placeholder meter provider (the class
    ``_ProxyMeterProvider``, not exported by the API, recognised by its name)."""
    return type(provider).__name__ == "_ProxyMeterProvider"


def histogram_reader_storages(histogram: object) -> object:
    """The per-reader storages behind an SDK histogram
    (``_measurement_consumer._reader_storages``); None where absent: phase histograms are
    then recorded through the public ``record`` only (the same result, slower)."""
    consumer = getattr(histogram, "_measurement_consumer", None)
    return getattr(consumer, "_reader_storages", None)


def has_measurement_consumer(histogram: object) -> bool:
    """Whether ``histogram`` is the SDK's synchronous instrument (``_measurement_consumer``);
    False: the public ``record`` path only."""
    return hasattr(histogram, "_measurement_consumer")


def series_aggregations(storages: object, histogram: object, keys: list[Any]) -> list[Any] | None:
    """Every reader's aggregation of one series of ``histogram`` (one of ``keys``), or None
    where it is not provably what ``record`` would update: a view that filters attributes,
    delta storage (``_reset_on_collect``), an unknown shape. None: ``record`` is used."""
    found = []
    try:
        for storage in dict(storages).values():  # type: ignore[call-overload]
            for match in storage._instrument_view_instrument_matches[histogram]:
                if match._reset_on_collect or match._view._attribute_keys is not None:
                    return None
                table = match._attributes_aggregation
                aggregation = None
                for key in keys:
                    aggregation = table.get(key)
                    if aggregation is not None:
                        break
                if aggregation is None or not hasattr(aggregation, "aggregate"):
                    return None
                found.append(aggregation)
    except (AttributeError, KeyError, TypeError):  # an SDK whose internals differ (1.44)
        return None
    return found or None


def _series_key_function() -> Callable[[Any], Any] | None:
    try:  # the SDK's series key (newer SDKs); older ones key aggregations by frozenset
        from opentelemetry.sdk.metrics._internal._view_instrument_match import (
            _hash_attributes,
        )
    except ImportError:  # pragma: no cover - older SDKs
        return None
    return _hash_attributes


#: the SDK's aggregation key of an attribute set, None where it keys by ``frozenset``
hash_attributes: Callable[[Any], Any] | None = _series_key_function()


# -- resources --------------------------------------------------------------------------------
def update_resource(provider: object, resource: Any) -> bool:
    """Merge ``resource`` over an SDK provider's resource, for everything it emits from now on
    (``_update_resource``: what the SDK's tracer, meter and logger providers do after a fork,
    updating the tracers and loggers they handed out). False where the provider has none (not
    the SDK's): its resource stays as it is, and the caller says so."""
    update = getattr(provider, "_update_resource", None)
    if not callable(update):
        return False
    try:
        update(resource)
    except Exception:  # another shape than the SDK's: leave the resource alone
        return False
    return True


def provider_resource(provider: object) -> Any:
    """An SDK provider's resource: ``resource`` of a tracer or logger provider, the SDK
    configuration's (``_sdk_config.resource``) of a meter provider; None when it has none."""
    resource = getattr(provider, "resource", None)
    if resource is None:
        resource = getattr(getattr(provider, "_sdk_config", None), "resource", None)
    return resource


def global_logger_provider() -> object:
    """The global logger provider (``opentelemetry._logs``, the API's logs module, whose name
    is still private); None where the API has none."""
    try:
        from opentelemetry import _logs
    except ImportError:  # pragma: no cover - every supported API has it
        return None
    return _logs.get_logger_provider()


# -- exit handlers ----------------------------------------------------------------------------
def has_sdk_exit_handler(provider: object) -> bool:
    """Whether an SDK provider registered its own ``atexit`` shutdown (``_atexit_handler``).
    False: memspan leaves the provider's exit alone."""
    return getattr(provider, "_atexit_handler", None) is not None


# -- exporters --------------------------------------------------------------------------------
def exporter_destination(exporter: object) -> str | None:
    """Where an exporter writes, for the start-up line: a file path (``_stream.path``) or an
    endpoint (``_endpoint``); None when unknown (the exporter is named by its class)."""
    path = getattr(getattr(exporter, "_stream", None), "path", None)
    if isinstance(path, str):
        return path
    endpoint = getattr(exporter, "_endpoint", None)
    if isinstance(endpoint, str) and endpoint:
        return endpoint
    return None


# -- context ----------------------------------------------------------------------------------
def _context_variable() -> ContextVar[Context] | None:
    runtime = getattr(otel_context, "_RUNTIME_CONTEXT", None)
    variable = getattr(runtime, "_current_context", None)
    return variable if isinstance(variable, ContextVar) else None


_CURRENT_CONTEXT = _context_variable()


def reset_context(token: Token[Context]) -> None:
    """Restore the context ``token`` saved, letting a token from another context raise
    (``ValueError``/``RuntimeError``), as the public ``detach`` does not (it logs and swallows
    it). Reads the API's runtime context variable (``_RUNTIME_CONTEXT._current_context``);
    where absent, the public ``detach`` is used and a wrong-context close goes unreported."""
    variable = _CURRENT_CONTEXT
    if variable is None:  # pragma: no cover - only if the API moves its context variable
        otel_context.detach(token)
        return
    variable.reset(token)


def internals_report() -> dict[str, bool]:
    """Which private accesses reach what they look for on the installed SDK, by accessor
    (for the SDK-range test). False means the accessor returned its fallback: on the
    newest SDK every value is True; on the oldest, ``series_aggregations`` falls back (1.44
    has no ``_reset_on_collect``, so phase histograms use the public ``record``)."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    batch = BatchSpanProcessor(exporter)
    provider.add_span_processor(batch)
    tracer = provider.get_tracer("memspan-probe")
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    meters = MeterProvider(metric_readers=[InMemoryMetricReader()])
    histogram = meters.get_meter("memspan-probe").create_histogram("probe")
    series = {"probe": "series"}
    histogram.record(1.0, series)
    keys = [frozenset(series.items())]
    if hash_attributes is not None:
        keys.insert(0, hash_attributes(series))
    multi = provider_span_processor(provider)
    report = {
        "missing_tracer_attributes": missing_tracer_attributes(tracer) == [],
        "readable_span_problem": readable_span_problem() is None,
        "span_limits": span_limits(tracer) is not None,
        "instrumentation_scope": instrumentation_scope(tracer) is not None,
        "provider_span_processor": multi is not None,
        "child_processors": child_processors(multi) == (batch,),
        "prepend_span_processor": (prepend_span_processor(multi, first := SpanProcessor())
                                   and child_processors(multi) == (first, batch)),
        "batch_queue": batch_queue(batch) is not None,
        "span_exporter_of": span_exporter_of(batch) is exporter,
        "parent_based_delegates": parent_based_delegates(tracer.sampler) is not None,  # type: ignore[attr-defined]
        "metric_readers": metric_readers(meters) is not None,
        "has_measurement_consumer": has_measurement_consumer(histogram),
        "histogram_reader_storages": histogram_reader_storages(histogram) is not None,
        "series_aggregations": series_aggregations(histogram_reader_storages(histogram),
                                                   histogram, keys) is not None,
        "has_sdk_exit_handler": has_sdk_exit_handler(TracerProvider(shutdown_on_exit=True)),
        "context_variable": _CURRENT_CONTEXT is not None,
        "proxy_meter_provider": is_proxy_meter_provider(_proxy_meter_provider()),
        "update_resource": _resource_updates(),
    }
    provider.shutdown()
    meters.shutdown()
    return report


def _resource_updates() -> bool:
    """Whether :func:`update_resource` renames a tracer, meter and logger provider and the
    tracer and logger they handed out before."""
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider

    from memspan.names import SERVICE_NAME

    renamed = Resource({SERVICE_NAME: "renamed"})
    tracers, meters, loggers = TracerProvider(), MeterProvider(), LoggerProvider()
    tracer = tracers.get_tracer("memspan-probe")
    logger = loggers.get_logger("memspan-probe")
    updated = all(update_resource(p, renamed) for p in (tracers, meters, loggers))
    seen = (provider_resource(tracers), getattr(tracer, "resource", None),
            provider_resource(meters), provider_resource(loggers),
            getattr(logger, "resource", None))
    names = {getattr(r, "attributes", {}).get(SERVICE_NAME) for r in seen}
    for provider in (tracers, meters, loggers):
        provider.shutdown()
    return updated and names == {"renamed"}


def _proxy_meter_provider() -> object:
    from opentelemetry.metrics import _internal as metrics_internal

    return metrics_internal._ProxyMeterProvider()
