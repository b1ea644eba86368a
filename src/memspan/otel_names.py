"""Names memspan shares with OpenTelemetry: the ``OTEL_*`` environment variables it reads or
sets, and the entry points it registers. One declaration each; nothing else in src/ spells
them (``tests/test_vocabulary_literals.py`` fails on a literal elsewhere).

- Variable names are taken from the OpenTelemetry constants
  (:mod:`opentelemetry.sdk.environment_variables`, :mod:`opentelemetry.environment_variables`
  for the exporter choices the API package defines, and
  :mod:`opentelemetry.instrumentation.environment_variables` for the auto-instrumentation's),
  never spelled here. The ones memspan
  validates are declared again, with their type and range, in
  :mod:`memspan.environment_variables`, which takes their names from here.
- Entry-point groups and names are the tables ``[project.entry-points.<group>]`` of
  pyproject.toml; a test keeps :data:`ENTRY_POINTS` equal to them and to the installed
  distribution's entry points.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from opentelemetry import environment_variables as _api
from opentelemetry.instrumentation import environment_variables as _instrumentation
from opentelemetry.sdk import environment_variables as _sdk

# -- environment variables --------------------------------------------------------------------
OTEL_SERVICE_NAME: Final = _sdk.OTEL_SERVICE_NAME
OTEL_RESOURCE_ATTRIBUTES: Final = _sdk.OTEL_RESOURCE_ATTRIBUTES
OTEL_EXPERIMENTAL_RESOURCE_DETECTORS: Final = _sdk.OTEL_EXPERIMENTAL_RESOURCE_DETECTORS
OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: Final = _sdk.OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT
OTEL_TRACES_EXPORTER: Final = _api.OTEL_TRACES_EXPORTER
OTEL_METRICS_EXPORTER: Final = _api.OTEL_METRICS_EXPORTER
OTEL_LOGS_EXPORTER: Final = _api.OTEL_LOGS_EXPORTER
OTEL_EXPORTER_OTLP_ENDPOINT: Final = _sdk.OTEL_EXPORTER_OTLP_ENDPOINT
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: Final = _sdk.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: Final = _sdk.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT
OTEL_EXPORTER_OTLP_TIMEOUT: Final = _sdk.OTEL_EXPORTER_OTLP_TIMEOUT
OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: Final = _sdk.OTEL_EXPORTER_OTLP_TRACES_TIMEOUT
OTEL_EXPORTER_OTLP_METRICS_TIMEOUT: Final = _sdk.OTEL_EXPORTER_OTLP_METRICS_TIMEOUT
OTEL_EXPORTER_OTLP_PROTOCOL: Final = _sdk.OTEL_EXPORTER_OTLP_PROTOCOL
OTEL_METRIC_EXPORT_INTERVAL: Final = _sdk.OTEL_METRIC_EXPORT_INTERVAL
OTEL_METRIC_EXPORT_TIMEOUT: Final = _sdk.OTEL_METRIC_EXPORT_TIMEOUT
OTEL_SDK_DISABLED: Final = _sdk.OTEL_SDK_DISABLED
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: Final = _sdk.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL
OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: Final = _sdk.OTEL_EXPORTER_OTLP_METRICS_PROTOCOL
OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED: Final = _sdk.OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED
#: instrumentations ``opentelemetry-instrument`` does not load (comma-separated, ``*``: all)
OTEL_PYTHON_DISABLED_INSTRUMENTATIONS: Final = (
    _instrumentation.OTEL_PYTHON_DISABLED_INSTRUMENTATIONS)
#: the per-signal protocol variable, by the signal's name in those variables
SIGNAL_PROTOCOL_VARIABLES: Final[Mapping[str, str]] = {
    "TRACES": OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "METRICS": OTEL_EXPORTER_OTLP_METRICS_PROTOCOL}

# -- entry points (pyproject.toml [project.entry-points.<group>]) ------------------------------
INSTRUMENTOR_GROUP: Final = "opentelemetry_instrumentor"
TRACES_EXPORTER_GROUP: Final = "opentelemetry_traces_exporter"
METRICS_EXPORTER_GROUP: Final = "opentelemetry_metrics_exporter"
RESOURCE_DETECTOR_GROUP: Final = "opentelemetry_resource_detector"

#: memspan under ``opentelemetry-instrument`` (:mod:`memspan.instrumentor`)
INSTRUMENTOR: Final = "memspan"
#: the embedded default output as a span and a metric exporter
#: (``OTEL_TRACES_EXPORTER=memspan_file``, :mod:`memspan.export.entry_points`)
FILE_EXPORTER: Final = "memspan_file"
#: memspan's resource attributes (:class:`memspan.resource.MemspanResourceDetector`)
RESOURCE_DETECTOR: Final = "memspan"

#: every entry point memspan registers: group -> names
ENTRY_POINTS: Final[Mapping[str, frozenset[str]]] = {
    INSTRUMENTOR_GROUP: frozenset({INSTRUMENTOR}),
    TRACES_EXPORTER_GROUP: frozenset({FILE_EXPORTER}),
    METRICS_EXPORTER_GROUP: frozenset({FILE_EXPORTER}),
    RESOURCE_DETECTOR_GROUP: frozenset({RESOURCE_DETECTOR}),
}

# -- entry-point names of the SDK that memspan writes into a child's environment --------------
#: the SDK's own resource detector, kept in ``OTEL_EXPERIMENTAL_RESOURCE_DETECTORS``
SDK_RESOURCE_DETECTOR: Final = "otel"
#: the exporter name that turns a signal off
NO_EXPORTER: Final = "none"
