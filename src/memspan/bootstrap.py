"""``memspan.configure()`` and ``memspan.shutdown()``: one call to start, one to finish.

Which providers the default tracker uses, in order:

1. providers passed to :func:`configure`;
2. global providers someone already installed (the user, ``opentelemetry-instrument``):
   memspan uses them and installs nothing;
3. exporters the user configured through the standard ``OTEL_*`` variables
   (``OTEL_EXPORTER_OTLP_*ENDPOINT``, ``OTEL_TRACES_EXPORTER``, ``OTEL_METRICS_EXPORTER``):
   memspan builds SDK providers for exactly those exporters and installs them globally;
4. otherwise the embedded default: OTLP JSON lines in ``./memspan-out/``, bounded in size.

Invariants:

- One :class:`Installation` per process, whoever started memspan (:func:`configure` or the
  ``opentelemetry-instrument`` entry point), and one drop ledger: the process ledger
  (:data:`memspan.drops.PROCESS_LEDGER`), which the tracker's ``memspan.recorder.dropped``
  exports and every exporter memspan builds counts into.
- :func:`shutdown` returns within its deadline even when an exporter is blocked (each
  provider shutdown runs in a daemon thread that is abandoned at the deadline). At exit it
  runs with :data:`EXIT_DEADLINE_S`, whatever the order of exit handlers: the providers
  memspan builds register no exit handler of their own, and the SDK's exit handlers of the
  global providers that auto-instrumentation built are replaced by memspan's bounded one.
  Each provider is shut down once, so a normal run logs no "already shutdown" warning.
- A bad configuration value, ``OTEL_*`` variable or output directory is a
  :class:`~memspan.config.ConfigError` naming it, raised by :func:`configure`.
- Unless ``MEMSPAN_QUIET`` is true, one line on stderr says where telemetry goes (not repeated
  by multiprocessing workers).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from multiprocessing import parent_process
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from memspan import environment_variables as ev
from memspan import otel_internals, otel_names
from memspan.analysis.thresholds import LeakThresholds
from memspan.config import ConfigError, MemspanConfig
from memspan.drops import PROCESS_LEDGER, DropLedger
from memspan.export.counting import CountingBatchSpanProcessor
from memspan.export.destination import exporters_of, startup_line
from memspan.export.embedded import EmbeddedOutput, build_embedded_output, span_limits
from memspan.resource import build_resource
from memspan.tracker import Tracker, default_tracker_if_any, set_default_tracker

_logger = logging.getLogger(__name__)

#: Seconds the exit handler gives the final flush and the providers' shutdown.
EXIT_DEADLINE_S = 5.0


@dataclass
class Providers:
    """The providers memspan found or installed.

    ``owned`` are shut down by :func:`shutdown`: the ones memspan built, and under
    auto-instrumentation the global ones whose SDK exit handlers memspan replaced.
    """

    mode: str  # "explicit", "global", "environment", "embedded", "instrumented"
    ledger: DropLedger
    embedded: EmbeddedOutput | None = None
    owned: list[Any] = field(default_factory=list)
    destinations: list[str] | None = None


@dataclass
class Installation:
    """What started memspan in this process, so :func:`shutdown` can take it down."""

    tracker: Tracker
    providers: Providers
    #: called first on shutdown (the instrumentor's torch patches)
    on_shutdown: list[Callable[[], object]] = field(default_factory=list)


_installation: Installation | None = None
_lock = threading.Lock()


def current_installation() -> Installation | None:
    return _installation


def user_configured_exporters(environ: Mapping[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    return any(env.get(variable, "").strip() for variable in ev.EXPORTER_CHOICE_VARIABLES)


def global_providers_set() -> bool:
    """True when someone installed a real (non-proxy) tracer or meter provider."""
    tracer_provider = trace.get_tracer_provider()
    meter_provider = metrics.get_meter_provider()
    proxy_meter = otel_internals.is_proxy_meter_provider(meter_provider)
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
    :func:`shutdown` first to start over. Raises :class:`ConfigError` for a bad setting.
    """
    global _installation
    with _lock:
        if _installation is not None:
            if settings or config or tracer_provider or meter_provider or service_name:
                _logger.warning("memspan.configure() was already called; "
                                "call memspan.shutdown() before configuring again")
            return _installation.tracker
        cfg = config if config is not None else MemspanConfig.from_env(**settings)
        if tracer_provider is not None or meter_provider is not None:
            providers = Providers("explicit", PROCESS_LEDGER)
        else:
            providers = install_providers(cfg, service_name)
            if _globals_retired() and len(providers.owned) == 2:  # not global: pass them
                tracer_provider, meter_provider = providers.owned
        installation = _start(cfg, providers, tracer_provider, meter_provider, None)
    _announce(installation)
    return installation.tracker


def instrument(config: MemspanConfig, tracer_provider: Any, meter_provider: Any,
               thresholds: LeakThresholds | None = None) -> Installation:
    """The ``opentelemetry-instrument`` entry point's start (see :mod:`memspan.instrumentor`).

    With providers passed in, they are used as they are. Otherwise the global providers the
    auto-instrumentation configured are used and memspan takes over their exit (bounded);
    with none configured (no distro), memspan sets them up as :func:`configure` would.
    """
    with _lock:
        if _installation is not None:  # configure() ran first: one installation per process
            _logger.warning("memspan: already configured; the instrumentor uses that tracker")
            return _installation
        if tracer_provider is not None or meter_provider is not None:
            providers = Providers("explicit", PROCESS_LEDGER)
        elif global_providers_set():
            providers = adopt_global_providers()
        else:
            providers = install_providers(config, None)
        installation = _start(config, providers, tracer_provider, meter_provider, thresholds)
    _announce(installation)
    return installation


def _start(cfg: MemspanConfig, providers: Providers, tracer_provider: Any, meter_provider: Any,
           thresholds: LeakThresholds | None) -> Installation:
    global _installation
    tracker = Tracker(tracer_provider=tracer_provider, meter_provider=meter_provider,
                      config=cfg, ledger=providers.ledger, install_excepthooks=True,
                      leak_thresholds=thresholds)
    # Alerts use increase(): the counter must exist at zero before the first OOM.
    tracker.oom_counter.add(0)
    previous = set_default_tracker(tracker)
    if previous is not None and previous is not tracker:
        previous.shutdown()
    installation = Installation(tracker, providers)
    _installation = installation
    _logger.info("memspan: configured (%s)", providers.mode)
    return installation


def _announce(installation: Installation) -> None:
    cfg = installation.tracker.config
    if cfg.quiet or _multiprocessing_child():  # once per job, not once per worker
        return
    line = startup_line(installation.providers.mode, installation.providers.destinations,
                        cfg.dump_dir, cfg.oom_enabled)
    try:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass  # no usable stderr: say nothing rather than fail


def _multiprocessing_child() -> bool:
    """True in a worker that multiprocessing started (spawn/forkserver, its resource tracker).

    Under ``opentelemetry-instrument`` such a worker starts memspan from sitecustomize, before
    multiprocessing has set up ``parent_process()``, so its command line tells.
    """
    if parent_process() is not None:
        return True
    argv = getattr(sys, "orig_argv", sys.argv)
    return any(arg == "--multiprocessing-fork" or arg.startswith("from multiprocessing")
               for arg in argv)


def install_providers(cfg: MemspanConfig, service_name: str | None) -> Providers:
    """Steps 2-4 of the module docstring: reuse globals, follow ``OTEL_*``, or embed.

    Global providers memspan itself installed and shut down (``configure()`` after
    ``shutdown()``) are not reused: OpenTelemetry's globals cannot be replaced, so the new
    providers are passed to the new tracker instead of being made global.
    """
    ledger = PROCESS_LEDGER
    if global_providers_set() and not _globals_retired():
        return Providers("global", ledger, destinations=exporters_of(
            trace.get_tracer_provider(), metrics.get_meter_provider()))
    resource = build_resource(service_name, cfg.job_id)
    if user_configured_exporters():
        tracer, meter = providers_from_environment(resource, ledger)
        _set_globals(tracer, meter)
        return Providers("environment", ledger, owned=[tracer, meter],
                         destinations=exporters_of(tracer, meter))
    try:
        embedded = build_embedded_output(
            cfg.output_dir,
            resource=resource,
            max_bytes=cfg.output_max_bytes,
            export_interval_s=cfg.export_interval_s,
            ledger=ledger,
        )
    except OSError as error:
        raise ConfigError(f"{ev.MEMSPAN_OUTPUT_DIR}={cfg.output_dir!r} is not usable: "
                          f"{error.strerror or error}; "
                          f"{ev.variable(ev.MEMSPAN_OUTPUT_DIR).accepted()}") from None
    _set_globals(embedded.tracer_provider, embedded.meter_provider)
    return Providers("embedded", ledger, embedded,
                     [embedded.tracer_provider, embedded.meter_provider],
                     destinations=[f"files in {embedded.directory} (traces.jsonl, "
                                   "metrics.jsonl)"])


def adopt_global_providers() -> Providers:
    """Use the global providers and make their exit bounded: their SDK exit handlers (which
    wait for a blocked exporter as long as it takes) are replaced by memspan's."""
    owned: list[Any] = []
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider()):
        shutdown_method = getattr(provider, "shutdown", None)
        if otel_internals.has_sdk_exit_handler(provider) and shutdown_method:
            atexit.unregister(shutdown_method)
            owned.append(provider)
    return Providers("instrumented", PROCESS_LEDGER, owned=owned, destinations=exporters_of(
        trace.get_tracer_provider(), metrics.get_meter_provider()))


#: global providers memspan installed and has shut down (they cannot be replaced as globals)
_retired_globals: list[Any] = []


def _globals_retired() -> bool:
    current = (trace.get_tracer_provider(), metrics.get_meter_provider())
    return any(provider is retired for provider in current for retired in _retired_globals)


def _set_globals(tracer_provider: TracerProvider, meter_provider: MeterProvider) -> None:
    """Make these the global providers, unless memspan's earlier ones hold that place."""
    if _globals_retired():
        return
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)


def validate_otel_environment(environ: Mapping[str, str] | None = None) -> None:
    """Check every standard ``OTEL_*`` variable memspan declares (endpoints, timeouts,
    protocols, attribute length): a bad one is a :class:`ConfigError` naming it."""
    for name, declared in ev.REGISTRY.items():
        if declared.external and name.startswith("OTEL_"):
            ev.read(name, environ)


def providers_from_environment(
    resource: Resource, ledger: DropLedger
) -> tuple[TracerProvider, MeterProvider]:
    """SDK providers with exactly the exporters the ``OTEL_*`` variables name.

    They register no exit handler (:func:`shutdown` takes them down within its deadline).
    """
    validate_otel_environment()
    tracer_provider = TracerProvider(resource=resource, span_limits=span_limits(),
                                     shutdown_on_exit=False)
    for exporter in _exporters(otel_names.TRACES_EXPORTER_GROUP, ev.OTEL_TRACES_EXPORTER,
                               "TRACES"):
        tracer_provider.add_span_processor(CountingBatchSpanProcessor(exporter, ledger))
    readers: list[MetricReader] = []
    for exporter in _exporters(otel_names.METRICS_EXPORTER_GROUP, ev.OTEL_METRICS_EXPORTER,
                               "METRICS"):
        if isinstance(exporter, MetricReader):
            readers.append(exporter)
        else:
            readers.append(PeriodicExportingMetricReader(exporter))
    return tracer_provider, MeterProvider(resource=resource, metric_readers=readers,
                                          shutdown_on_exit=False)


def _exporters(group: str, variable: str, signal: str) -> list[Any]:
    names = [n.strip() for n in os.environ.get(variable, "otlp").split(",") if n.strip()]
    protocol = (
        os.environ.get(otel_names.SIGNAL_PROTOCOL_VARIABLES[signal])
        or os.environ.get(ev.OTEL_EXPORTER_OTLP_PROTOCOL)
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
        try:
            out.append(found[0].load()())
        except Exception as error:  # the exporter read a variable it could not use
            raise ConfigError(f"{variable}: the {name!r} exporter could not be built from the "
                              f"OTEL_* variables: {type(error).__name__}: {error}") from None
    return out


def shutdown(timeout_s: float = 5.0) -> bool:
    """Stop the default tracker and flush/stop the providers memspan installed.

    Returns True when everything finished within ``timeout_s``. Afterwards phases pass
    through (no thread starts, nothing is written) until ``configure()`` is called again.
    """
    global _installation
    with _lock:
        installation, _installation = _installation, None
    if installation is None:
        tracker = default_tracker_if_any()
        set_default_tracker(None, retire=True)
        if tracker is None:
            return True
        deadline = time.monotonic() + timeout_s
        tracker.prepare_final_export(timeout_s)
        flushed = tracker.flush_providers(_left(deadline))  # someone else's: flushed, not stopped
        return tracker.shutdown(_left(deadline)) and flushed
    finished = shutdown_installation(installation, timeout_s)
    set_default_tracker(None, retire=True)
    return finished


def uninstrument(timeout_s: float = EXIT_DEADLINE_S) -> bool:
    """Stop memspan's installation but leave global providers it adopted running: they belong
    to the auto-instrumentation, so their SDK exit handlers are given back instead."""
    global _installation
    with _lock:
        installation, _installation = _installation, None
    if installation is None:
        return True
    if installation.providers.mode == "instrumented":
        for provider in installation.providers.owned:
            atexit.register(provider.shutdown)
        installation.providers.owned = []
    finished = shutdown_installation(installation, timeout_s)
    set_default_tracker(None, retire=True)
    return finished


def shutdown_installation(installation: Installation, timeout_s: float) -> bool:
    """Take one installation down within ``timeout_s``: its hooks, tracker and providers."""
    deadline = time.monotonic() + timeout_s
    for hook in installation.on_shutdown:
        try:
            hook()
        except Exception:
            _logger.warning("memspan: a shutdown step failed", exc_info=True)
    tracker = installation.tracker
    if default_tracker_if_any() is tracker:
        set_default_tracker(None)
    finished = tracker.prepare_final_export(timeout_s)
    owned = installation.providers.owned
    # Flush while the observable callbacks still answer, so the last figures are exported.
    for provider in owned:
        finished = _within(_left(deadline), provider.force_flush) and finished
    if not owned:  # global providers someone else installed: flushed, never stopped
        finished = tracker.flush_providers(_left(deadline)) and finished
    finished = tracker.shutdown(_left(deadline)) and finished
    current = (trace.get_tracer_provider(), metrics.get_meter_provider())
    _retired_globals.extend(p for p in owned if any(p is c for c in current))
    return shutdown_providers(owned, _left(deadline)) and finished


def shutdown_providers(providers: list[Any], timeout_s: float) -> bool:
    """Shut providers down, giving up waiting at the deadline."""
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


def _at_exit() -> None:
    shutdown(EXIT_DEADLINE_S)


atexit.register(_at_exit)
