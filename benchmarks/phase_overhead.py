"""µs per phase: memspan.phase vs a bare OTel SDK span with the same span processor.

Rows: a bare span; an SDK span carrying the same attributes and recording the same two
histograms by hand (what the telemetry contract itself costs in the SDK); memspan.phase on
a host-only tracker; memspan.phase with torch imported (no CUDA). Target: memspan / bare
<= 1.3.
"""

from __future__ import annotations

import sys

from _table import Row, interleaved_median, report
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import memspan
from memspan.sources import HostMemorySource


class NullExporter(SpanExporter):
    def export(self, spans):  # type: ignore[no-untyped-def]
        return SpanExportResult.SUCCESS


def providers() -> tuple[TracerProvider, MeterProvider]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(NullExporter(), max_queue_size=1 << 16))
    return tracer_provider, MeterProvider(metric_readers=[InMemoryMetricReader()])


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    tracer_provider, meter_provider = providers()
    tracer = tracer_provider.get_tracer("bench")
    meter = meter_provider.get_meter("bench")
    duration = meter.create_histogram("d", unit="s")
    peak = meter.create_histogram("p", unit="By")
    host_tracker = memspan.Tracker(tracer_provider=tracer_provider, meter_provider=meter_provider,
                                   sources=[HostMemorySource()])

    def bare(n: int) -> None:
        for _ in range(n):
            with tracer.start_as_current_span("phase"):
                pass

    attributes = {f"memspan.bench.{i}": i for i in range(12)}
    end_attributes = {f"memspan.bench.end.{i}": i for i in range(6)}

    def sdk_contract(n: int) -> None:
        for _ in range(n):
            with tracer.start_as_current_span("phase", attributes=attributes) as span:
                span.set_attributes(end_attributes)
                duration.record(0.001, {"memspan.phase.path": "phase"})
                peak.record(1 << 20, {"memspan.phase.path": "phase", "memspan.memory.device": "host"})

    def host_phase(n: int) -> None:
        for _ in range(n):
            with host_tracker.phase("phase"):
                pass

    import torch  # noqa: F401  (loaded on purpose: the torch row)

    torch_tracker = memspan.Tracker(tracer_provider=tracer_provider,
                                    meter_provider=meter_provider)

    def torch_phase(n: int) -> None:
        for _ in range(n):
            with torch_tracker.phase("phase"):
                pass

    results = interleaved_median(
        {"bare": bare, "sdk": sdk_contract, "host": host_phase, "torch": torch_phase}, calls
    )
    base = results["bare"]
    rows = [
        Row("bare SDK span (same processor)", base, "us", "", 1.0),
        Row("SDK span + contract attrs + 2 histograms", results["sdk"], "us", "", results["sdk"] / base),
        Row("memspan.phase, host-only tracker", results["host"], "us", "<= 1.3x bare",
            results["host"] / base, results["host"] / base <= 1.3),
        Row("memspan.phase, torch loaded (CPU)", results["torch"], "us", "<= 1.3x bare",
            results["torch"] / base, results["torch"] / base <= 1.3),
        Row("memspan.phase / SDK contract span", results["host"] / results["sdk"], "x", "",
            results["host"] / results["sdk"]),
    ]
    host_tracker.shutdown()
    torch_tracker.shutdown()
    report("phase_overhead", rows)


if __name__ == "__main__":
    main()
