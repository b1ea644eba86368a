"""The SDK's ``BatchSpanProcessor`` with its queue-full drops counted in memspan's ledger.

The queue stays the SDK's (bounded, drops the oldest when full); this subclass only notices
that a span is about to push another one out and counts it as ``export_queue_full``, so an
exporter that is down shows up in ``memspan.recorder.dropped`` instead of a log line.

The SDK has no public way to ask how full the queue is, so this reads the batch processor's
queue through :func:`memspan.otel_internals.batch_queue`. When a future SDK moves them, counting
stops *loudly*: the constructor logs one warning per process saying that these drops are no
longer counted by memspan and that the SDK's own ``otel.sdk.processor.span.processed``
counter (``error.type=queue_full``, enabled by ``OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED``)
still counts them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sized
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter

from memspan import names, otel_internals, otel_names
from memspan.drops import EXPORT_QUEUE_FULL, DropLedger
from memspan.phases.span_path import BatchingProcessor

_logger = logging.getLogger(__name__)
_warned = threading.Event()


class CountingBatchSpanProcessor(BatchSpanProcessor, BatchingProcessor):
    def __init__(self, exporter: SpanExporter, ledger: DropLedger, **kwargs: Any) -> None:
        super().__init__(exporter, **kwargs)
        self._ledger = ledger
        found = otel_internals.batch_queue(self)
        self._queue: Sized | None = found[0] if found is not None else None
        self._limit: int | None = found[1] if found is not None else None
        self.counting = found is not None
        #: the check and the append are one step, so concurrent callers never both count
        #: the one free slot as full
        self._count_lock = threading.Lock()
        if not self.counting and not _warned.is_set():
            _warned.set()
            _logger.warning(
                "memspan: this OpenTelemetry SDK does not expose its span queue; spans dropped "
                f"by a full export queue are not counted in {names.RECORDER_DROPPED} (the SDK's "
                "otel.sdk.processor.span.processed{error.type=queue_full} counts them when "
                f"{otel_names.OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED}=true)")

    def on_end(self, span: ReadableSpan) -> None:
        queue, limit = self._queue, self._limit
        if queue is None or limit is None:
            super().on_end(span)
            return
        with self._count_lock:
            full = len(queue) >= limit
            super().on_end(span)
        if full:
            self._ledger.add(EXPORT_QUEUE_FULL, warning=(
                f"the span export queue ({limit} spans) is full: spans end faster than the "
                "exporter takes them (many short phases in a fast loop, or a slow or "
                "unreachable exporter); the oldest spans are dropped"))
