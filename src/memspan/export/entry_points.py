"""The embedded default as exporter entry points (``OTEL_TRACES_EXPORTER=memspan_file``).

``memspan run`` selects them when the user configured no exporter, so a child process set up
by the standard auto-instrumentation configurator writes the same bounded OTLP JSON lines as
``memspan.configure()``: ``$MEMSPAN_OUTPUT_DIR/traces.jsonl`` and ``metrics.jsonl``.
"""

from __future__ import annotations

import os
from typing import IO, cast

from opentelemetry.exporter.otlp.json.file import FileMetricExporter, FileSpanExporter

from memspan.config import MemspanConfig
from memspan.drops import PROCESS_LEDGER
from memspan.export.bounded_file import BoundedLineFile
from memspan.export.embedded import METRICS_FILE, TRACES_FILE


def _stream(file_name: str) -> IO[str]:
    config = MemspanConfig.from_env()
    path = os.path.join(os.path.abspath(config.output_dir), file_name)
    return cast(IO[str], BoundedLineFile(path, int(config.output_max_mb * 1024 * 1024),
                                         PROCESS_LEDGER))


class EmbeddedSpanExporter(FileSpanExporter):
    def __init__(self) -> None:
        super().__init__(stream=_stream(TRACES_FILE))


class EmbeddedMetricExporter(FileMetricExporter):
    def __init__(self) -> None:
        super().__init__(stream=_stream(METRICS_FILE))
