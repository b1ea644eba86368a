"""Real OTLP exporters (HTTP and gRPC) to real receivers on loopback, with an OOM."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from memspan import MemspanConfig, Tracker, names
from memspan.instruments import METRIC_CATALOGUE
from memspan.sources import CgroupMemorySource, HostMemorySource

from .otlp_receiver import Received, attributes_of, otlp_grpc_receiver, otlp_http_receiver

CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
            "79.15 GiB of which 1.44 GiB is free.")


def http_exporters(endpoint: str) -> tuple[Any, Any]:
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return (OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"),
            OTLPMetricExporter(endpoint=f"{endpoint}/v1/metrics"))


def grpc_exporters(endpoint: str) -> tuple[Any, Any]:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return (OTLPSpanExporter(endpoint=endpoint, insecure=True),
            OTLPMetricExporter(endpoint=endpoint, insecure=True))


def run_workload(span_exporter: Any, metric_exporter: Any, dump_dir: Path) -> None:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter, schedule_delay_millis=100))
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=60_000)
    meter_provider = MeterProvider(metric_readers=[reader])
    tracker = Tracker(tracer_provider=tracer_provider, meter_provider=meter_provider,
                      config=MemspanConfig(dump_dir=str(dump_dir), sample_interval_s=0.02),
                      sources=[HostMemorySource(), CgroupMemorySource()])
    try:
        with tracker.phase("train"):
            for step in range(3):
                with tracker.phase("step", step=step), tracker.phase("forward"):
                    bytearray(1 << 20)
        with pytest.raises(torch.OutOfMemoryError), tracker.phase("train"), \
                tracker.phase("step", step=3), tracker.phase("forward"):
            raise torch.OutOfMemoryError(CUDA_OOM)
        tracker.sampler.sample_once()
    finally:
        meter_provider.force_flush()  # while the observable callbacks still answer
        tracker.shutdown()
        tracer_provider.force_flush()
        meter_provider.shutdown()
        tracer_provider.shutdown()


def check(received: Received, dump_dir: Path) -> None:
    spans = [span for _, span in received.spans()]
    phase_spans = {span.span_id: span for span in spans}
    attrs = {span.span_id: attributes_of(span.attributes) for span in spans}
    forward_ids = [sid for sid, a in attrs.items() if a.get(names.PHASE_PATH) == "train / step / forward"]
    assert len(forward_ids) == 4
    for sid in forward_ids:
        a = attrs[sid]
        for key in (names.PHASE_NAME, names.PHASE_DEPTH, names.PHASE_SCOPE_ID,
                    names.PHASE_PARENT_SCOPE_ID, names.SESSION_ID, names.THREAD_ID,
                    names.THREAD_NAME, names.MEMORY_DEVICE, names.RSS_START, names.RSS_END,
                    names.RSS_PEAK, names.PEAK_EXACT, names.RETAINED):
            assert key in a, key
    (failing,) = [phase_spans[sid] for sid in forward_ids if attrs[sid].get(names.OOM_DUMP_PATH)]
    events = {e.name: attributes_of(e.attributes) for e in failing.events}
    assert set(events) == {"memspan.oom", "exception"}
    dump_path = attrs[failing.span_id][names.OOM_DUMP_PATH]
    assert events["memspan.oom"][names.OOM_DUMP_PATH] == dump_path
    assert events["memspan.oom"][names.OOM_KIND] == "device_oom"
    assert events["exception"]["exception.type"] == "torch.OutOfMemoryError"
    assert Path(dump_path).parent == dump_dir
    units = {name: unit for name, _, unit in METRIC_CATALOGUE}
    for name in (names.PROCESS_MEMORY_USAGE, names.PROCESS_MEMORY_WINDOW_PEAK,
                 names.PHASE_DURATION, names.PHASE_MEMORY_PEAK, names.OOM_COUNT):
        metrics = received.metrics_named(name)
        assert metrics, name
        assert metrics[0].unit == units[name], name
    exemplar_ids = [e.span_id for peak in received.metrics_named(names.PHASE_MEMORY_PEAK)
                    for point in peak.histogram.data_points for e in point.exemplars]
    assert exemplar_ids
    for span_id in exemplar_ids:
        assert span_id in phase_spans and names.PHASE_PATH in attrs[span_id]


@pytest.mark.parametrize(("receiver", "exporters"), [
    (otlp_http_receiver, http_exporters),
    (otlp_grpc_receiver, grpc_exporters),
], ids=["otlp-http", "otlp-grpc"])
def test_phased_workload_with_an_oom_over_otlp(
    tmp_path: Path, receiver: Callable[..., Any], exporters: Callable[[str], tuple[Any, Any]],
) -> None:
    with receiver() as (endpoint, received):
        run_workload(*exporters(endpoint), tmp_path)
        check(received, tmp_path)
