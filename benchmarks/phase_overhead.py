"""Cost per phase against a bare OTel SDK span, on the caller's thread and in total CPU.

Every variant gets its own TracerProvider with a BatchSpanProcessor and a null exporter, and is
measured in alternating rounds. Per round and variant:

- caller's thread: ``time.thread_time()`` of the thread running the loop (CPU only, so the GIL
  time other threads take is not charged to it);
- total CPU: ``time.process_time()`` from the loop's start until the variant's own background
  work is done (memspan: its pending phases delivered and the processor flushed; bare spans:
  the processor flushed), so each variant pays for the background work it caused and nothing
  spills into the next variant's round.

Rows: a bare span; memspan.phase on a host-only tracker (the default ``deferred`` span path);
the same with torch imported (CPU build, no CUDA); the ``sdk`` path (ordinary SDK spans, the
fallback); Stormlog 0.4.3's CPU phase when the ``bench`` extra is installed.
The ``sync`` rows put a synchronous ``SimpleSpanProcessor`` in front of both memspan and the
bare span (memspan hands each span to it at the phase's exit, as the specification requires).
The ``embedded`` rows are the default a new user gets: the embedded local files (OTLP JSON
lines through the SDK's batch processor), for memspan and for bare spans alike; their figure is
wall time per phase of a sustained loop, the write to disk included (each round ends with a
flush).
Targets: caller's thread <= 1.0x a bare span (host), <= 1.2x with torch; total CPU <= 1.45x
(deferred) and <= 1.3x (sync, against a bare span on the same processor); the embedded files
within 1.3x of bare spans to the same exporter in wall time; Stormlog's CPU phase >= 3x slower
than memspan's in wall time, flush included.
"""

from __future__ import annotations

import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from _table import Row, report
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

import memspan
from memspan.drops import DropLedger
from memspan.export.embedded import build_embedded_output
from memspan.resource import build_resource
from memspan.sources import HostMemorySource

#: phases a round of the embedded rows: within the batch processor's default queue (2048)
EMBEDDED_ROUND = 1500


class NullExporter(SpanExporter):
    def export(self, spans):  # type: ignore[no-untyped-def]
        return SpanExportResult.SUCCESS


def embedded_provider(directory: str) -> TracerProvider:
    """The embedded default's tracer provider, writing to ``directory`` (as configure() builds it)."""
    return build_embedded_output(directory, resource=build_resource("bench"), max_bytes=256 << 20,
                                 export_interval_s=60.0, ledger=DropLedger()).tracer_provider


def provider(simple: bool = False) -> TracerProvider:
    """A provider exporting to nowhere: through a batch processor, or (``simple``) through a
    synchronous ``SimpleSpanProcessor`` (memspan then takes its conformant ``sync`` path)."""
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(NullExporter()) if simple else
        BatchSpanProcessor(NullExporter(), max_queue_size=1 << 16, max_export_batch_size=2048))
    return tracer_provider


class Variant:
    """A loop of ``n`` phases and the call that finishes its background work."""

    def __init__(self, loop: Callable[[int], None], settle: Callable[[], Any],
                 max_calls: int | None = None) -> None:
        self.loop = loop
        self.max_calls = max_calls
        self.settle = settle
        self.caller: list[float] = []
        self.total: list[float] = []
        self.wall: list[float] = []

    def measure(self, calls: int) -> None:
        if self.max_calls is not None:
            calls = min(calls, self.max_calls)
        gc.collect()
        wall_start = time.perf_counter()
        process_start = time.process_time()
        thread_start = time.thread_time()
        self.loop(calls)
        thread_end = time.thread_time()
        self.settle()
        process_end = time.process_time()
        wall_end = time.perf_counter()
        self.caller.append((thread_end - thread_start) / calls * 1e6)
        self.total.append((process_end - process_start) / calls * 1e6)
        self.wall.append((wall_end - wall_start) / calls * 1e6)


def bare_variant(simple: bool = False, tracer_provider: TracerProvider | None = None) -> Variant:
    tracer_provider = tracer_provider if tracer_provider is not None else provider(simple)
    tracer = tracer_provider.get_tracer("bench")

    def loop(n: int) -> None:
        for _ in range(n):
            with tracer.start_as_current_span("phase"):
                pass

    return Variant(loop, tracer_provider.force_flush)


def memspan_variant(simple: bool = False, tracer_provider: TracerProvider | None = None,
                    **tracker_kwargs: Any) -> tuple[Variant, memspan.Tracker]:
    tracer_provider = tracer_provider if tracer_provider is not None else provider(simple)
    tracker = memspan.Tracker(tracer_provider=tracer_provider,
                              meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
                              **tracker_kwargs)

    def loop(n: int) -> None:
        phase = tracker.phase
        for _ in range(n):
            with phase("phase"):
                pass

    def settle() -> None:  # histograms, ring and leak watch run on the export worker
        tracker.flush()
        tracer_provider.force_flush()

    return Variant(loop, settle), tracker


def stormlog_variant() -> Variant | None:
    try:
        from stormlog.cpu_profiler import CPUMemoryTracker
    except ImportError:
        return None
    tracker = CPUMemoryTracker(sampling_interval=0.1, max_events=10_000, enable_alerts=False)
    tracker.start_tracking()

    def loop(n: int) -> None:
        for _ in range(n):
            with tracker.phase("phase"):
                pass

    return Variant(loop, lambda: None)


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 9
    variants: dict[str, Variant] = {"bare": bare_variant(), "bare_simple": bare_variant(True)}
    trackers = []
    variants["sync"], tracker = memspan_variant(True, sources=[HostMemorySource()])
    assert tracker.span_path.mode == "sync", tracker.span_path.reason
    trackers.append(tracker)
    variants["host"], tracker = memspan_variant(sources=[HostMemorySource()])
    trackers.append(tracker)
    variants["sdk"], tracker = memspan_variant(sources=[HostMemorySource()],
                                               config=memspan.MemspanConfig(span_mode="sdk"))
    trackers.append(tracker)
    import torch  # noqa: F401  (loaded on purpose: the torch row)

    variants["torch"], tracker = memspan_variant()
    trackers.append(tracker)
    scratch = tempfile.mkdtemp(prefix="memspan-bench-")
    variants["bare_embedded"] = bare_variant(tracer_provider=embedded_provider(
        os.path.join(scratch, "bare")))
    variants["embedded"], tracker = memspan_variant(
        tracer_provider=embedded_provider(os.path.join(scratch, "memspan")),
        sources=[HostMemorySource()])
    trackers.append(tracker)
    for name in ("bare_embedded", "embedded"):  # a round fits the SDK's default 2048-span
        variants[name].max_calls = EMBEDDED_ROUND  # queue: neither side drops spans
    stormlog = stormlog_variant()
    if stormlog is not None:
        variants["stormlog"] = stormlog
    for variant in variants.values():  # warm-up
        variant.measure(max(1, calls // 4))
        variant.caller.clear()
        variant.total.clear()
    for _ in range(rounds):
        for variant in variants.values():
            variant.measure(calls)
    caller = {name: statistics.median(v.caller) for name, v in variants.items()}
    total = {name: statistics.median(v.total) for name, v in variants.items()}
    wall = {name: statistics.median(v.wall) for name, v in variants.items()}
    base_caller, base_total = caller["bare"], total["bare"]
    rows = [
        Row("bare SDK span: caller's thread", base_caller, "us", "", 1.0),
        Row("bare SDK span: total CPU", base_total, "us", "", 1.0),
        Row("memspan.phase, host: caller's thread", caller["host"], "us", "<= 1.0x bare",
            caller["host"] / base_caller, caller["host"] / base_caller <= 1.0),
        Row("memspan.phase, host: total CPU", total["host"], "us", "<= 1.45x bare",
            total["host"] / base_total, total["host"] / base_total <= 1.45),
        Row("memspan.phase, torch loaded: caller's thread", caller["torch"], "us",
            "<= 1.2x bare", caller["torch"] / base_caller, caller["torch"] / base_caller <= 1.2),
        Row("memspan.phase, torch loaded: total CPU", total["torch"], "us", "",
            total["torch"] / base_total),
        Row("bare SDK span, SimpleSpanProcessor: total CPU", total["bare_simple"], "us", "",
            1.0),
        Row("memspan.phase, SimpleSpanProcessor (sync path): caller's thread", caller["sync"],
            "us", "", caller["sync"] / caller["bare_simple"]),
        Row("memspan.phase, SimpleSpanProcessor (sync path): total CPU", total["sync"], "us",
            "<= 1.3x bare", total["sync"] / total["bare_simple"],
            total["sync"] / total["bare_simple"] <= 1.3),
        Row("memspan.phase, sdk path (fallback): caller's thread", caller["sdk"], "us", "",
            caller["sdk"] / base_caller),
        Row("memspan.phase, sdk path (fallback): total CPU", total["sdk"], "us", "",
            total["sdk"] / base_total),
    ]
    embedded_ratio = wall["embedded"] / wall["bare_embedded"]
    rows += [
        Row("bare SDK span, embedded files: wall", wall["bare_embedded"], "us", "", 1.0),
        Row("bare SDK span, embedded files: total CPU", total["bare_embedded"], "us", "", 1.0),
        Row("memspan.phase, embedded files (the default): wall", wall["embedded"], "us",
            "<= 1.3x bare", embedded_ratio, embedded_ratio <= 1.3),
        Row("memspan.phase, embedded files (the default): total CPU", total["embedded"], "us",
            "", total["embedded"] / total["bare_embedded"]),
    ]
    if "stormlog" in caller:
        speedup = caller["stormlog"] / caller["host"]
        wall_speedup = wall["stormlog"] / wall["host"]
        rows.append(Row("Stormlog 0.4.3 CPU phase: caller's thread", caller["stormlog"], "us",
                        "", caller["stormlog"] / base_caller))
        rows.append(Row("memspan speed-up over Stormlog (caller's thread)", speedup, "x",
                        ">= 2.5x", None, speedup >= 2.5))
        rows.append(Row("memspan speed-up over Stormlog (wall, flush included)", wall_speedup,
                        "x", ">= 3x", None, wall_speedup >= 3.0))
    else:
        rows.append(Row("Stormlog 0.4.3 not installed (pip install '.[bench]')", 0.0, ""))
    for tracker in trackers:
        tracker.shutdown()
    shutil.rmtree(scratch, ignore_errors=True)
    report("phase_overhead", rows)


if __name__ == "__main__":
    main()
