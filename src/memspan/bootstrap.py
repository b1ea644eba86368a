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

A ``configure()`` after the session started:

- Under ``opentelemetry-instrument`` or ``memspan run`` the installation starts before the
  script runs (:func:`instrument`, from sitecustomize). The script's own first
  ``configure()`` (the README's quick start) **joins** it: no warning, the same tracker is
  returned, and the user's settings are merged into the running session. It joins rather
  than replacing the installation because replacing loses telemetry: the providers were
  built before the script ran (by the OpenTelemetry configurator, or by memspan from the
  ``OTEL_*`` variables), they are the global ones, which OpenTelemetry lets no one replace
  and other instrumentations already hold tracers of; and a second tracker on the same
  meter provider registers the same observable instruments again, which the SDK answers
  with the first tracker's (silenced) ones.
- What is merged: ``service_name`` and ``job_id`` rename the resource of the providers
  memspan or the auto-instrumentation set up, for everything they emit from then on (as
  the SDK updates it after a fork); the bundle settings (``dump_dir``, ``oom_enabled``,
  ``max_dumps``, ``max_total_mb``), ``reports_dir`` and ``quiet`` apply at once
  (:data:`memspan.tracker.Tracker.LIVE_SETTINGS`). What the providers or the running session
  were built with keeps its running value: ``output_dir``, ``output_max_mb`` and
  ``export_interval_s`` (the exporters' files and readers), the sampling, buffer, span-mode
  and step settings, ``dump_dir`` while breadcrumbs are on (``memspan run`` reads them
  where it put them), a resource of providers the user made, providers passed in. One
  warning line names each setting that kept its running value, that value, and the
  variable or option that sets it for the run; none when everything applied.
- A phase opened before ``configure()`` starts an implicit session on the global
  providers. Where those are the providers ``configure()`` would use anyway (someone set
  global providers), ``configure()`` joins that session the same way, so a phase open
  around the call keeps its span. Otherwise ``configure()`` builds the providers and a new
  session (registering its instruments before the providers become global, so the
  implicit session's instruments cannot shadow them) and the implicit session ends. A
  phase still open in the caller's context (a ``@memspan.phase`` function that calls
  ``configure()``) is kept where it can be, on the session it opened in; one that opened
  before any provider was set (an invalid span context) was never recorded and cannot be.
  One warning names such phases, what becomes of them, and the fix (``configure()`` before
  the phase opens).
- The user's second explicit ``configure()`` warns and changes nothing, as before.
"""

from __future__ import annotations

import atexit
import dataclasses
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
from memspan import names, otel_internals, otel_names
from memspan.analysis.thresholds import LeakThresholds
from memspan.config import ConfigError, MemspanConfig
from memspan.drops import PROCESS_LEDGER, DropLedger
from memspan.export.counting import CountingBatchSpanProcessor
from memspan.export.destination import exporters_of, startup_line
from memspan.export.embedded import EmbeddedOutput, build_embedded_output, span_limits
from memspan.export.prometheus import SDK_ENTRY_POINT_MODULE, prometheus_reader
from memspan.resource import build_resource, fallback_service_name, is_default_service_name
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
    #: the user's own ``configure()`` ran (False while only the auto-instrumentation started
    #: it: the next ``configure()`` joins it without a warning)
    configured: bool = True
    #: when the session started, as the warning of a joining ``configure()`` says it
    origin: str = "at memspan.configure()"


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
    ``sample_interval_s=0.05``...) and override ``MEMSPAN_*`` variables. Under
    ``opentelemetry-instrument`` or ``memspan run``, or after a phase opened on the global
    providers, it joins the running session (see the module docstring). Calling it again
    returns the running tracker (with a warning when the arguments differ); call
    :func:`shutdown` first to start over. Raises :class:`ConfigError` for a bad setting.
    """
    global _installation
    asked = bool(settings or config or tracer_provider or meter_provider or service_name)
    notices: list[str | None] = []
    with _lock:
        running = _installation
        if running is not None and running.configured:
            if asked:
                _logger.warning("memspan.configure() was already called; "
                                "call memspan.shutdown() before configuring again")
            return running.tracker
        cfg = config if config is not None else MemspanConfig.from_env(**settings)
        validate_otel_environment()  # a bad OTEL_* value is refused here, naming it
        if running is None and sdk_disabled():
            return _switched_off(cfg)
        given = tracer_provider is not None or meter_provider is not None
        # the auto-instrumentation announced its own start; a session configure() starts
        # or adopts is announced now
        announce = running is None
        implicit = default_tracker_if_any() if running is None else None
        if running is None and implicit is not None and not given and _joinable(implicit):
            running = _adopt(implicit)  # it reports to the providers configure() would use
        if running is not None:
            running.configured = True
            asked_for = set(settings) if config is None else {
                item.name for item in dataclasses.fields(MemspanConfig)}
            notices += [_open_phases_notice(running.tracker, replaced=False),
                        _join(running, cfg, asked_for, service_name, given)]
            installation = running
        else:
            if implicit is not None:
                notices.append(_open_phases_notice(implicit, replaced=True))
            if given:
                providers = Providers("explicit", PROCESS_LEDGER)
            else:
                providers = install_providers(cfg, service_name, make_global=False)
                if len(providers.owned) == 2:
                    tracer_provider, meter_provider = providers.owned
            installation = _start(cfg, providers, tracer_provider, meter_provider, None)
            if not given and len(providers.owned) == 2:
                # global only now: the implicit session's instruments, waiting on the API's
                # placeholder provider, then find this session's instead of shadowing them
                _set_globals(*providers.owned)
    for notice in notices:
        if notice is not None:
            _logger.warning(notice)
    if announce:
        _announce(installation)
    return installation.tracker


def sdk_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """``OTEL_SDK_DISABLED`` is true (as the SDK reads it: ``true``, any case)."""
    env = os.environ if environ is None else environ
    return env.get(otel_names.OTEL_SDK_DISABLED, "").strip().lower() == "true"


def _switched_off(cfg: MemspanConfig) -> Tracker:
    """``OTEL_SDK_DISABLED=true``: no provider, no exporter, no thread; the module-level API
    passes through; one line says so. The tracker returned is passive (no-op providers)."""
    tracker = Tracker(tracer_provider=trace.NoOpTracerProvider(),
                      meter_provider=metrics.NoOpMeterProvider(), config=cfg, passive=True)
    set_default_tracker(None, retire=True)
    if not cfg.quiet and not _multiprocessing_child():
        try:
            sys.stderr.write(f"memspan: telemetry is off ({otel_names.OTEL_SDK_DISABLED}=true): "
                             "no spans, metrics or bundles are written and no memspan thread "
                             "runs; phases pass through\n")
            sys.stderr.flush()
        except (OSError, ValueError, AttributeError):
            pass
    return tracker


def _joinable(tracker: Tracker) -> bool:
    """Whether a session started by a phase before ``configure()`` already reports where
    ``configure()`` would send telemetry: the global providers someone set (step 2)."""
    return (tracker.uses_global_providers and global_providers_set()
            and not _globals_retired())


def _adopt(tracker: Tracker) -> Installation:
    """Make the implicit session the installation, as :func:`_start` would have built it."""
    global _installation
    tracker.flight_recorder.install_excepthooks()
    tracker.oom_counter.add(0)
    providers = Providers("global", PROCESS_LEDGER, destinations=exporters_of(
        trace.get_tracer_provider(), metrics.get_meter_provider()))
    installation = Installation(tracker, providers, origin="when the first phase opened")
    _installation = installation
    return installation


#: settings of the embedded output's exporters and readers (fixed with the providers)
_EXPORT_SETTINGS = frozenset({"output_dir", "output_max_mb", "export_interval_s"})
#: the ``memspan run`` option of a setting, where it has one
_RUN_OPTIONS = {"output_dir": "memspan run --output-dir", "dump_dir": "memspan run --dump-dir"}


def _join(installation: Installation, requested: MemspanConfig, asked_for: set[str],
          service_name: str | None, providers_given: bool) -> str | None:
    """Merge the settings the user asked for (``asked_for``: the keywords, or every field of a
    ``config`` passed in) into the running session (the module docstring says what applies);
    the one warning naming what kept its running value, or None."""
    tracker = installation.tracker
    running = tracker.config
    applied: dict[str, Any] = {}
    kept: list[str] = []
    for item in dataclasses.fields(MemspanConfig):
        setting = item.name
        if setting not in asked_for:
            continue
        wanted, current = getattr(requested, setting), getattr(running, setting)
        if wanted == current:
            continue
        if setting == "dump_dir" and running.breadcrumbs:
            kept.append(_kept(setting, wanted, current, "memspan run reads this process's "
                                                        "breadcrumbs there after the job"))
        elif setting in Tracker.LIVE_SETTINGS:
            applied[setting] = wanted
        elif setting in _EXPORT_SETTINGS:
            kept.append(_kept(setting, wanted, current,
                              "the exporters were chosen when the session started"))
        else:
            kept.append(_kept(setting, wanted, current, "the session was built with it"))
    renames: dict[str, Any] = {}
    if service_name:
        renames[names.SERVICE_NAME] = service_name
    if applied.get("job_id"):
        renames[names.JOB_ID] = applied["job_id"]
    renamed = bool(renames) and _rename(installation, renames)
    if renames and not renamed:
        refused = {"service_name": service_name, "job_id": applied.pop("job_id", None)}
        for setting, value in refused.items():
            if value:
                kept.append(f"{setting}={value!r} is not applied (the providers in use are "
                            "neither memspan's nor the auto-instrumentation's: their resource "
                            "names the service)")
    if providers_given:
        kept.append("tracer_provider/meter_provider are not used (the session keeps the "
                    "providers it started with)")
    if applied:
        tracker.update_settings(**applied)
    if not kept:
        return None
    took = [f"{setting}={value!r}" for setting, value in sorted(applied.items())]
    if renamed and service_name:
        took.insert(0, f"service_name={service_name!r}")
    return (f"memspan: configure() joined the session that started {installation.origin} "
            f"(one per process): {'; '.join(kept)}"
            + (f"; applied: {', '.join(took)}" if took else ""))


def _kept(setting: str, wanted: Any, current: Any, why: str) -> str:
    variable = ev.settings()[setting].name
    where = f"{variable}" + (f" or {_RUN_OPTIONS[setting]}" if setting in _RUN_OPTIONS else "")
    return f"{setting} stays {current!r}, not {wanted!r} ({why}; set {where} instead)"


def _rename(installation: Installation, attributes: Mapping[str, Any]) -> bool:
    """Merge ``attributes`` over the resource of the providers memspan or the
    auto-instrumentation set up (never those the user made); False where there are none."""
    mode = installation.providers.mode
    if mode in ("explicit", "global"):
        return False
    if mode == "instrumented":  # the configurator's: its logs carry the same resource
        providers = [trace.get_tracer_provider(), metrics.get_meter_provider(),
                     otel_internals.global_logger_provider()]
    else:
        providers = list(installation.providers.owned)
    resource = Resource(dict(attributes))
    updated = [otel_internals.update_resource(p, resource) for p in providers if p is not None]
    return any(updated)


def _open_phases_notice(session: Tracker, *, replaced: bool) -> str | None:
    """The warning for phases open in the current context on a session ``configure()``
    replaces (``replaced``) or joins, that the user would otherwise not find in the output:
    those opened before any provider was set (an invalid span context: they were never
    recorded), and on a replaced session every one (they end there, without the new
    settings). None when there are none (see the module docstring)."""
    open_phases = session.open_phases()
    lost = [p for p in open_phases if not p.get_span_context().is_valid]
    elsewhere = [p for p in open_phases if p.get_span_context().is_valid] if replaced else []
    if not lost and not elsewhere:
        return None
    parts = []
    if lost:
        one = len(lost) == 1
        parts.append(f"{_phase_list(lost)} opened before memspan.configure() and "
                     f"{'is' if one else 'are'} not exported: opened before any OpenTelemetry "
                     f"provider was set, {'it was' if one else 'they were'} never recorded")
    if elsewhere:
        one = len(elsewhere) == 1
        parts.append(f"{_phase_list(elsewhere)} opened before memspan.configure() and "
                     f"{'ends' if one else 'end'} on the session {'it' if one else 'they'} "
                     "opened in, without configure()'s settings")
    return (f"memspan: {'; '.join(parts)}; call memspan.configure() before the phase opens "
            "(at the top of the script, not inside a @memspan.phase(...) function)")


def _phase_list(phases: list[Any]) -> str:
    shown = ", ".join(repr(p.path_text) for p in phases)
    return f"{'phase' if len(phases) == 1 else 'phases'} {shown}"


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
            name_unnamed_service()
        else:
            providers = install_providers(config, None, make_global=False)
            if len(providers.owned) == 2:
                tracer_provider, meter_provider = providers.owned
        installation = _start(config, providers, tracer_provider, meter_provider, thresholds)
        if providers.mode in ("embedded", "environment"):
            _set_globals(*providers.owned)  # after the tracker registered its instruments
        installation.configured = False  # the script's own configure() joins it
        installation.origin = "before the script ran"
    _announce(installation)
    return installation


def name_unnamed_service() -> None:
    """Give the global providers the auto-instrumentation built the script's name as
    ``service.name`` where the SDK left its placeholder (``unknown_service:python3``) and
    neither ``OTEL_SERVICE_NAME`` nor ``OTEL_RESOURCE_ATTRIBUTES`` names the service: the
    name ``memspan run`` gives its child. Runs before the script, so everything the providers
    emit carries it; a provider whose resource cannot be updated keeps the placeholder."""
    name = fallback_service_name()
    if name is None:
        return
    resource = Resource({names.SERVICE_NAME: name})
    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(),
                     otel_internals.global_logger_provider()):
        current = otel_internals.provider_resource(provider)
        if isinstance(current, Resource) and is_default_service_name(current):
            otel_internals.update_resource(provider, resource)


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


def install_providers(cfg: MemspanConfig, service_name: str | None, *,
                      make_global: bool = True) -> Providers:
    """Steps 2-4 of the module docstring: reuse globals, follow ``OTEL_*``, or embed.

    Global providers memspan itself installed and shut down (``configure()`` after
    ``shutdown()``) are not reused: OpenTelemetry's globals cannot be replaced, so the new
    providers are passed to the new tracker instead of being made global. With
    ``make_global=False`` the providers it builds (``owned``) are not made global yet: the
    caller does, with :func:`_set_globals`, once its tracker is built on them.
    """
    ledger = PROCESS_LEDGER
    if global_providers_set() and not _globals_retired():
        return Providers("global", ledger, destinations=exporters_of(
            trace.get_tracer_provider(), metrics.get_meter_provider()))
    resource = build_resource(service_name, cfg.job_id)
    if user_configured_exporters():
        tracer, meter = providers_from_environment(resource, ledger)
        if make_global:
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
    if make_global:
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
            if name == "prometheus" and found[0].value.startswith(SDK_ENTRY_POINT_MODULE):
                out.append(prometheus_reader())  # service and rank as labels too
                continue
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
    """Run ``action`` in a daemon thread; give up waiting after ``timeout_s``.

    When no thread can be started (memory or the thread limit exhausted: the host OOM that
    ended the job may still be in force at exit), ``action`` runs inline instead, bounded only
    by its own timeouts: the last flush is worth more than the deadline."""
    done = threading.Event()

    def run() -> None:
        try:
            action()
        except Exception as error:
            _logger.warning("memspan: provider shutdown failed: %s: %s",
                            type(error).__name__, error)
        finally:
            done.set()

    try:
        threading.Thread(target=run, name="memspan-shutdown", daemon=True).start()
    except (RuntimeError, MemoryError):  # "can't start new thread"
        run()
        return True
    return done.wait(timeout_s)


def _at_exit() -> None:
    """The exit handler: bounded by :data:`EXIT_DEADLINE_S`; it never prints a traceback of
    memspan's own (a failure is one line), whatever state the process ends in."""
    try:
        shutdown(EXIT_DEADLINE_S)
    except BaseException as error:
        try:
            sys.stderr.write(f"memspan: the final export at exit failed "
                             f"({type(error).__name__}: {error})\n")
        except BaseException:
            pass


atexit.register(_at_exit)
