"""The embedded default: SDK providers writing OTLP JSON lines under one directory.

Used when the user configured no exporter at all, so a first run shows something without
a collector. Spans go through the SDK's ``BatchSpanProcessor`` (bounded queue; memspan's
:class:`~memspan.export.counting.CountingBatchSpanProcessor` counts the spans a full queue
pushes out) into :class:`SpanLinesExporter`, which encodes them with
:func:`~memspan.export.span_json.encode_spans_dict` (the OTel library's OTLP JSON, built
without its intermediate messages); metrics go through a
``PeriodicExportingMetricReader`` into the SDK's OTLP JSON file exporter. Both write to
:class:`~memspan.export.bounded_file.BoundedLineFile` streams (0600 files in a 0700 directory).

Invariants:

- One span too large for the file bound is dropped alone (``output_span_oversized``), never
  the batch it came with: a batch whose line would not fit is split until its parts fit.
- String attribute values are cut at ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` characters
  (memspan's default when the variable is unset, see :func:`span_limits`), so one value
  cannot make a span that large in the first place.
- Shutting down twice is silent (the SDK's exporter warns on a second call).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any, cast

from opentelemetry.exporter.otlp.json.file import FileMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from memspan import environment_variables as ev
from memspan.drops import OUTPUT_SPAN_OVERSIZED, DropLedger
from memspan.export.bounded_file import BoundedLineFile
from memspan.export.counting import CountingBatchSpanProcessor
from memspan.export.span_json import agrees_with_library, encode_spans_dict, json_line

TRACES_FILE = "traces.jsonl"
METRICS_FILE = "metrics.jsonl"


def span_limits() -> SpanLimits:
    """The SDK's span limits with memspan's default attribute value length.

    ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`` wins when set (validated, a bad value is a
    :class:`~memspan.config.ConfigError`); unset, the SDK would keep values of any length.
    """
    declared = ev.variable(ev.OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT)
    length = ev.read(declared.name)
    return SpanLimits(max_attribute_length=int(length if length is not None
                                                else declared.default))


class SpanLinesExporter(SpanExporter):
    """Spans as OTLP JSON lines into a bounded file; oversized spans are dropped one by one."""

    def __init__(self, stream: BoundedLineFile, ledger: DropLedger) -> None:
        self._stream = stream
        self._ledger = ledger
        self._shutdown = False

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        ok = self._write(list(spans))
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def _write(self, spans: list[ReadableSpan]) -> bool:
        if not spans:
            return True
        encoded = encode_spans_dict(spans)  # the library's OTLP JSON, built faster
        if not encoded:  # no resource spans
            return True
        data = json_line(encoded)
        if len(data) <= self._stream.max_bytes:
            return self._stream.write_line(data, records=len(spans))  # rotation counts spans
        if len(spans) == 1:
            self._ledger.add(
                OUTPUT_SPAN_OVERSIZED,
                warning=f"span {spans[0].name!r} encodes to {len(data)} bytes, more than the "
                f"{self._stream.max_bytes}-byte bound of {self._stream.path}; it was dropped "
                "(the other spans of its batch were kept)",
            )
            return False
        middle = len(spans) // 2
        first = self._write(spans[:middle])
        return self._write(spans[middle:]) and first

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        self._shutdown = True


class MetricLinesExporter(FileMetricExporter):
    """The SDK's OTLP JSON metric file exporter on a bounded file, silent when shut down twice."""

    def __init__(self, stream: BoundedLineFile) -> None:
        super().__init__(stream=cast(IO[str], stream))
        self._stream = stream  # named in the start-up line
        self._memspan_closed = False

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        if self._memspan_closed:
            return
        self._memspan_closed = True
        super().shutdown(timeout_millis, **kwargs)


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
    """Providers that write to ``directory``; they register no exit handler of their own
    (``memspan.shutdown`` takes them down within its deadline)."""
    directory = os.path.abspath(directory)
    # Checked now, on the configuring thread: its probe batch allocates, and inside the first
    # export that would land in whatever phase of the user's is running then.
    agrees_with_library()
    traces = BoundedLineFile(os.path.join(directory, TRACES_FILE), max_bytes, ledger)
    metrics = BoundedLineFile(os.path.join(directory, METRICS_FILE), max_bytes, ledger)
    tracer_provider = TracerProvider(resource=resource, span_limits=span_limits(),
                                     shutdown_on_exit=False)
    tracer_provider.add_span_processor(
        CountingBatchSpanProcessor(SpanLinesExporter(traces, ledger), ledger)
    )
    reader = PeriodicExportingMetricReader(
        MetricLinesExporter(metrics), export_interval_millis=export_interval_s * 1000.0,
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader],
                                   shutdown_on_exit=False)
    return EmbeddedOutput(directory, tracer_provider, meter_provider, traces, metrics)
