"""The SDK's ``BatchSpanProcessor`` with its queue-full drops counted in memspan's ledger.

The queue stays the SDK's (bounded, drops the oldest when full); this subclass only notices
that a span is about to push another one out and counts it as ``export_queue_full``, so an
exporter that is down shows up in ``memspan.recorder.dropped`` instead of a log line.
"""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from memspan.drops import EXPORT_QUEUE_FULL, DropLedger


class CountingBatchSpanProcessor(BatchSpanProcessor):
    def __init__(self, exporter: SpanExporter, ledger: DropLedger, **kwargs: Any) -> None:
        super().__init__(exporter, **kwargs)
        self._ledger = ledger

    def on_end(self, span: ReadableSpan) -> None:
        inner = getattr(self, "_batch_processor", None)
        queue = getattr(inner, "_queue", None)
        limit = getattr(inner, "_max_queue_size", None)
        if queue is not None and limit is not None and len(queue) >= limit:
            self._ledger.add(EXPORT_QUEUE_FULL,
                             warning="the span export queue is full (is the exporter down?); "
                                     "the oldest spans are dropped")
        super().on_end(span)
