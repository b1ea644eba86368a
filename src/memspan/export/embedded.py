"""The embedded default: SDK providers writing OTLP JSON lines under one directory.

Used when the user configured no exporter at all, so a first run shows something without
a collector. Spans go through the SDK's ``BatchSpanProcessor`` (bounded queue, drops counted
by the SDK) and metrics through a ``PeriodicExportingMetricReader``, both into the official
OTLP JSON file exporters writing to :class:`BoundedLineFile` streams.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import IO, cast

from opentelemetry.exporter.otlp.json.file import FileMetricExporter, FileSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from memspan.drops import DropLedger
from memspan.export.bounded_file import BoundedLineFile
from memspan.export.counting import CountingBatchSpanProcessor

TRACES_FILE = "traces.jsonl"
METRICS_FILE = "metrics.jsonl"


@dataclass
class EmbeddedOutput:
    """The providers of the embedded default and the files they write."""

    directory: str
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    traces: BoundedLineFile
    metrics: BoundedLineFile


def build_embedded_output(
    directory: str,
    *,
    resource: Resource,
    max_bytes: int,
    export_interval_s: float,
    ledger: DropLedger,
) -> EmbeddedOutput:
    directory = os.path.abspath(directory)
    traces = BoundedLineFile(os.path.join(directory, TRACES_FILE), max_bytes, ledger)
    metrics = BoundedLineFile(os.path.join(directory, METRICS_FILE), max_bytes, ledger)
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        CountingBatchSpanProcessor(FileSpanExporter(stream=cast(IO[str], traces)), ledger)
    )
    reader = PeriodicExportingMetricReader(
        FileMetricExporter(stream=cast(IO[str], metrics)),
        export_interval_millis=export_interval_s * 1000.0,
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    return EmbeddedOutput(directory, tracer_provider, meter_provider, traces, metrics)
