"""Bounded under load: RSS after 1,000,000 phases minus RSS after 10,000 (target < 2 MiB),
and phases per second from 1 and 8 threads.

The tracker runs with its real sources, sampler, flight recorder and leak watcher; spans go
to a BatchSpanProcessor with a null exporter. Its queue is bounded by the SDK (2,048 spans)
but only reaches that bound after some tens of thousands of phases, and the memory those
spans used stays in Python's allocator afterwards: the steady-state row (from 100,000)
separates that one-time warm-up from growth. Before each RSS reading the script collects
garbage and asks glibc to return freed heap memory (``malloc_trim``), so the figure is what
is still in use, not what the allocator kept.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
import time

from _table import Row, report
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import memspan
from memspan.sources.host import HostMemorySource


class NullExporter(SpanExporter):
    def export(self, spans):  # type: ignore[no-untyped-def]
        return SpanExportResult.SUCCESS


def release_free_heap() -> None:
    """Give memory Python already freed back to the OS (glibc keeps it otherwise), so the
    RSS figure shows what is still in use. A no-op where glibc's malloc_trim is missing."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def main() -> None:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(NullExporter()))
    reader = InMemoryMetricReader()
    tracker = memspan.Tracker(tracer_provider=tracer_provider,
                              meter_provider=MeterProvider(metric_readers=[reader]))
    host = HostMemorySource()
    paths = ("forward", "backward", "optimizer")
    rss_at: dict[int, int] = {}
    objects_at: dict[int, int] = {}
    started = time.perf_counter()
    for i in range(1, total + 1):
        with tracker.phase(paths[i % 3]):
            pass
        if i in (10_000, 100_000, total):
            # a quiet moment: the SDK's span queue drained, an export done, garbage collected
            reader.get_metrics_data()
            tracer_provider.force_flush()
            gc.collect()
            release_free_heap()
            rss_at[i] = host.rss_bytes() or 0
            objects_at[i] = len(gc.get_objects())
        elif i % 100_000 == 0:
            reader.get_metrics_data()
    single = total / (time.perf_counter() - started)
    growth = (rss_at[total] - rss_at[10_000]) / 2**20
    steady = (rss_at[total] - rss_at.get(100_000, rss_at[10_000])) / 2**20

    per_thread = 20_000
    def work() -> None:
        for _ in range(per_thread):
            with tracker.phase("worker"), tracker.phase("inner"):
                pass
    threads = [threading.Thread(target=work) for _ in range(8)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    eight = 8 * 2 * per_thread / (time.perf_counter() - started)
    tracker.shutdown()
    rows = [
        Row(f"RSS growth from 10,000 to {total:,} phases", growth, "MiB", "< 2 MiB", None,
            growth < 2.0),
        Row(f"RSS growth from 100,000 to {total:,} phases (steady state)", steady, "MiB",
            "< 2 MiB", None, steady < 2.0),
        Row(f"live Python objects, {total:,} phases minus 100,000",
            objects_at[total] - objects_at.get(100_000, objects_at[10_000]), "objects",
            "flat (~0)"),
        Row("phases per second, 1 thread", single, "1/s"),
        Row("phases per second, 8 threads", eight, "1/s", "", eight / single),
    ]
    report("flatness", rows)


if __name__ == "__main__":
    main()
