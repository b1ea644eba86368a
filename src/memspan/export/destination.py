"""Where telemetry goes, in one line for a person: the start-up line on stderr.

The SDK has no public way to list a provider's exporters, so :func:`exporters_of` looks at
the span processors and metric readers defensively: anything it cannot recognise is named by
its class, and nothing here ever raises (a description must not break start-up).
"""

from __future__ import annotations

from typing import Any

from memspan import environment_variables as ev
from memspan import otel_internals, otel_names
from memspan.phases.span_path import PassiveProcessor

_NOWHERE_HINT = (f"set {otel_names.OTEL_TRACES_EXPORTER} / {otel_names.OTEL_METRICS_EXPORTER} or "
                 f"{otel_names.OTEL_EXPORTER_OTLP_ENDPOINT}, or run without "
                 "opentelemetry-instrument's providers to get memspan's files")


def _describe_exporter(exporter: Any) -> str:
    name = type(exporter).__name__
    where = otel_internals.exporter_destination(exporter)
    return f"{name} -> {where}" if where is not None else name


def exporters_of(tracer_provider: Any, meter_provider: Any) -> list[str] | None:
    """Descriptions of the exporters behind two SDK providers; None when they are not SDK
    providers (or not recognisable), [] when they are and export nowhere."""
    try:
        multi = otel_internals.provider_span_processor(tracer_provider)
        processors = otel_internals.child_processors(multi) if multi is not None else None
        readers = otel_internals.metric_readers(meter_provider)
        if processors is None and readers is None:
            return None
        out: list[str] = []
        for processor in processors or ():
            if isinstance(processor, PassiveProcessor):
                continue  # memspan's own flush hook is not a destination
            exporter = otel_internals.span_exporter_of(processor)
            out.append("spans: " + _describe_exporter(exporter if exporter is not None
                                                       else processor))
        for reader in readers or ():
            exporter = otel_internals.metric_exporter_of(reader)
            out.append("metrics: " + _describe_exporter(exporter if exporter is not None
                                                         else reader))
        return out
    except Exception:
        return None


def startup_line(mode: str, destinations: list[str] | None, dump_dir: str,
                 oom_enabled: bool) -> str:
    """The one line memspan prints at start-up (see ``docs/configuration.md``)."""
    bundles = f"OOM bundles -> {dump_dir}" if oom_enabled else "OOM bundles off"
    quiet = f"{ev.MEMSPAN_QUIET}=true hides this line"
    if mode == "explicit":
        where = "the providers passed to memspan"
    elif destinations is None:
        where = "the OpenTelemetry providers already installed"
    elif not destinations:
        return (f"memspan: telemetry goes NOWHERE: the installed OpenTelemetry providers have "
                f"no exporter ({_NOWHERE_HINT}); {bundles}; {quiet}")
    else:
        where = "; ".join(destinations)
    return f"memspan: telemetry -> {where}; {bundles}; {quiet}"
