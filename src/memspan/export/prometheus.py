"""The direct Prometheus exporter (``OTEL_METRICS_EXPORTER=prometheus``) with the resource
attributes dashboards filter on copied as labels.

On this path resource attributes otherwise reach only ``target_info``, so every series lacks
``service_name`` and ``memspan_rank`` and the dashboard's service and rank variables are empty.
Invariant: the labels copied are the per-process identity of :data:`IDENTITY_ATTRIBUTES`
(constant for a process, so no cardinality is added); everything else about the reader is the
SDK entry point's (``OTEL_EXPORTER_PROMETHEUS_HOST``/``_PORT``, default ``localhost:9464``).
An exporter release without ``resource_attribute_filter`` gets the plain reader (labels only on
``target_info``), and says so once. This path carries no exemplars (the SDK's exporter writes
none): exemplars need OTLP through the Collector.
"""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any, Final

from opentelemetry.sdk.environment_variables import (
    OTEL_EXPORTER_PROMETHEUS_HOST,
    OTEL_EXPORTER_PROMETHEUS_PORT,
)

from memspan import names

_logger = logging.getLogger(__name__)

#: resource attributes copied onto every series (Prometheus spells them with underscores)
IDENTITY_ATTRIBUTES: Final = frozenset({
    names.SERVICE_NAME, names.SERVICE_INSTANCE_ID, names.JOB_ID, names.RANK, names.LOCAL_RANK,
})
#: the entry point whose reader this replaces (anything else named ``prometheus`` is left alone)
SDK_ENTRY_POINT_MODULE: Final = "opentelemetry.exporter.prometheus"


def prometheus_reader() -> Any:
    """A started ``PrometheusMetricReader`` labelling series with the process identity."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from prometheus_client import start_http_server

    if "resource_attribute_filter" in inspect.signature(PrometheusMetricReader).parameters:
        reader = PrometheusMetricReader(
            resource_attribute_filter=IDENTITY_ATTRIBUTES.__contains__)
    else:
        _logger.warning("memspan: this opentelemetry-exporter-prometheus cannot copy resource "
                        "attributes as labels; service and rank are only on target_info")
        reader = PrometheusMetricReader()
    start_http_server(port=int(os.environ.get(OTEL_EXPORTER_PROMETHEUS_PORT, "9464")),
                      addr=os.environ.get(OTEL_EXPORTER_PROMETHEUS_HOST, "localhost"))
    return reader
