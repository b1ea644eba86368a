"""``memspan.configure()`` and ``memspan.shutdown()``: one call to start, one to finish.

Which providers the default tracker uses, in order:

1. providers passed to :func:`configure`;
2. global providers someone already installed (the user, ``opentelemetry-instrument``):
   memspan uses them and installs nothing;
3. exporters the user configured through the standard ``OTEL_*`` variables
   (``OTEL_EXPORTER_OTLP_*ENDPOINT``, ``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER``):
   memspan builds SDK providers for exactly those exporters and installs them globally;
4. otherwise the embedded default: OTLP JSON lines in ``./memspan-out/``, bounded in size.

Invariant: :func:`shutdown` returns within its deadline even when an exporter is blocked
(the provider shutdown runs in a helper thread that is abandoned at the deadline).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from memspan.config import ConfigError, MemspanConfig
from memspan.drops import DropLedger
from memspan.export.counting import CountingBatchSpanProcessor
from memspan.export.embedded import EmbeddedOutput, build_embedded_output
from memspan.resource import build_resource
from memspan.tracker import Tracker, default_tracker_if_any, set_default_tracker

_logger = logging.getLogger(__name__)

_EXPORTER_VARIABLES = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_METRICS_EXPORTER",
)


@dataclass
class Providers:
    """The global providers memspan found or installed (``owned`` are the ones it built)."""

    mode: str  # "explicit", "global", "environment", "embedded"
    ledger: DropLedger
    embedded: EmbeddedOutput | None = None
    owned: list[Any] = field(default_factory=list)


@dataclass
class Installation:
    """What :func:`configure` set up, so :func:`shutdown` can take it down."""

    tracker: Tracker
    providers: Providers


_installation: Installation | None = None
_lock = threading.Lock()


def user_configured_exporters(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return any(env.get(variable, "").strip() for variable in _EXPORTER_VARIABLES)


def global_providers_set() -> bool:
    """True when someone installed a real (non-proxy) tracer or meter provider."""
    tracer_provider = trace.get_tracer_provider()
    meter_provider = metrics.get_meter_provider()
    proxy_meter = type(meter_provider).__name__ == "_ProxyMeterProvider"
    return not isinstance(tracer_provider, trace.ProxyTracerProvider) or not proxy_meter


def configure(
    *,
    service_name: str | None = None,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    config: MemspanConfig | None = None,
    **settings: Any,
) -> Tracker:
    """Start memspan for this process and return the default :class:`Tracker`.

    ``settings`` are :class:`MemspanConfig` fields (``output_dir="runs/a"``,
    ``sample_interval_s=0.05``...) and override ``MEMSPAN_*`` variables. Calling it again
    returns the running tracker (with a warning when the arguments differ); call
    :func:`shutdown` first to start over.
    """
    global _installation
    with _lock:
        if _installation is not None:
            if settings or config or tracer_provider or meter_provider or service_name:
                _logger.warning("memspan.configure() was already called; "
                                "call memspan.shutdown() before configuring again")
            return _installation.tracker
        cfg = config if config is not None else MemspanConfig.from_env(**settings)
        installation = _install(cfg, service_name, tracer_provider, meter_provider)
        previous = set_default_tracker(installation.tracker)
        if previous is not None and previous is not installation.tracker:
            previous.shutdown()
        _installation = installation
    _logger.info("memspan: configured (%s)", installation.providers.mode)
    return installation.tracker


def _install(
    cfg: MemspanConfig,
    service_name: str | None,
    tracer_provider: trace.TracerProvider | None,
    meter_provider: metrics.MeterProvider | None,
) -> Installation:
    if tracer_provider is not None or meter_provider is not None:
        tracker = Tracker(tracer_provider=tracer_provider, meter_provider=meter_provider,
                          config=cfg, install_excepthooks=True)
        return Installation(tracker, Providers("explicit", tracker.ledger))
    providers = install_providers(cfg, service_name)
    tracker = Tracker(config=cfg, ledger=providers.ledger, install_excepthooks=True)
    return Installation(tracker, providers)


def install_providers(cfg: MemspanConfig, service_name: str | None) -> Providers:
    """Steps 2-4 of the module docstring: reuse globals, follow ``OTEL_*``, or embed."""
    ledger = DropLedger()
    if global_providers_set():
        return Providers("global", ledger)
    resource = build_resource(service_name, cfg.job_id)
    if user_configured_exporters():
        tracer, meter = providers_from_environment(resource, ledger)
        _set_globals(tracer, meter)
        return Providers("environment", ledger, owned=[tracer, meter])
    embedded = build_embedded_output(
        cfg.output_dir,
        resource=resource,
        max_bytes=int(cfg.output_max_mb * 1024 * 1024),
        export_interval_s=cfg.export_interval_s,
        ledger=ledger,
    )
    _set_globals(embedded.tracer_provider, embedded.meter_provider)
    return Providers("embedded", ledger, embedded,
                     [embedded.tracer_provider, embedded.meter_provider])


def _set_globals(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> None:
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)


def providers_from_environment(
    resource: Resource, ledger: DropLedger
) -> tuple[TracerProvider, MeterProvider]:
    """SDK providers with exactly the exporters the ``OTEL_*`` variables name."""
    tracer_provider = TracerProvider(resource=resource)
    for exporter in _exporters("opentelemetry_traces_exporter", "OTEL_TRACES_EXPORTER", "TRACES"):
        tracer_provider.add_span_processor(CountingBatchSpanProcessor(exporter, ledger))
    readers: list[MetricReader] = []
    for exporter in _exporters("opentelemetry_metrics_exporter", "OTEL_METRICS_EXPORTER", "METRICS"):
        if isinstance(exporter, MetricReader):
            readers.append(exporter)
        else:
            readers.append(PeriodicExportingMetricReader(exporter))
    return tracer_provider, MeterProvider(resource=resource, metric_readers=readers)


def _exporters(group: str, variable: str, signal: str) -> list[Any]:
    names = [n.strip() for n in os.environ.get(variable, "otlp").split(",") if n.strip()]
    protocol = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).strip()
    out = []
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            name = "otlp_proto_http" if protocol.startswith("http") else "otlp_proto_grpc"
        found = list(entry_points(group=group, name=name))
        if not found:
            raise ConfigError(
                f"{variable}={os.environ.get(variable)!r}: no installed exporter named {name!r}"
            )
        out.append(found[0].load()())
    return out


def shutdown(timeout_s: float = 5.0) -> bool:
    """Stop the default tracker and flush/stop the providers memspan installed.

    Returns True when everything finished within ``timeout_s``.
    """
    global _installation
    with _lock:
        installation, _installation = _installation, None
    tracker = installation.tracker if installation is not None else default_tracker_if_any()
    if tracker is None:
        return True
    if installation is None or default_tracker_if_any() is tracker:
        set_default_tracker(None)
    deadline = time.monotonic() + timeout_s
    finished = tracker.prepare_final_export(timeout_s)
    owned = installation.providers.owned if installation is not None else []
    # Flush while the observable callbacks still answer, so the last figures are exported.
    for provider in owned:
        finished = _within(_left(deadline), provider.force_flush) and finished
    finished = tracker.shutdown(_left(deadline)) and finished
    return shutdown_providers(owned, _left(deadline)) and finished


def shutdown_providers(providers: list[Any], timeout_s: float) -> bool:
    """Flush and shut down providers, giving up waiting at the deadline."""
    deadline = time.monotonic() + timeout_s
    finished = True
    for provider in providers:
        finished = _within(_left(deadline), provider.shutdown) and finished
    return finished


def _left(deadline: float) -> float:
    return max(0.05, deadline - time.monotonic())


def _within(timeout_s: float, action: Callable[[], object]) -> bool:
    """Run ``action`` in a daemon thread; give up waiting after ``timeout_s``."""
    done = threading.Event()

    def run() -> None:
        try:
            action()
        except Exception:
            _logger.warning("memspan: provider shutdown failed", exc_info=True)
        finally:
            done.set()

    threading.Thread(target=run, name="memspan-shutdown", daemon=True).start()
    return done.wait(timeout_s)


atexit.register(shutdown)
