"""The embedded default as exporter entry points (``OTEL_TRACES_EXPORTER=memspan_file``).

``memspan run`` selects them when the user configured no exporter, so a child process set up
by the standard auto-instrumentation configurator writes the same bounded OTLP JSON lines as
``memspan.configure()``: ``traces.jsonl`` and ``metrics.jsonl`` in the output directory of
:class:`~memspan.config.MemspanConfig` (0600 files in a 0700 directory). Their drops (rotation,
oversized spans, failed writes) are counted in the process ledger, which the instrumentor's
tracker exports; the span queue here is the configurator's plain ``BatchSpanProcessor``, whose
queue-full drops only the SDK's own ``otel.sdk.processor.span.processed`` counts.
"""

from __future__ import annotations

import os

from memspan.config import MemspanConfig
from memspan.drops import PROCESS_LEDGER
from memspan.export.bounded_file import BoundedLineFile
from memspan.export.embedded import (
    METRICS_FILE,
    TRACES_FILE,
    MetricLinesExporter,
    SpanLinesExporter,
)


def _stream(file_name: str) -> BoundedLineFile:
    config = MemspanConfig.from_env()
    return BoundedLineFile(os.path.join(config.output_dir, file_name), config.output_max_bytes,
                           PROCESS_LEDGER)


class EmbeddedSpanExporter(SpanLinesExporter):
    def __init__(self) -> None:
        super().__init__(_stream(TRACES_FILE), PROCESS_LEDGER)


class EmbeddedMetricExporter(MetricLinesExporter):
    def __init__(self) -> None:
        super().__init__(_stream(METRICS_FILE))
