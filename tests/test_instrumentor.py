"""MemspanInstrumentor in code: explicit providers, and uninstrument() taking everything off."""

from __future__ import annotations

import sys

import torch
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from torch import nn

from memspan import MemspanConfig, names
from memspan.instrumentor import MemspanInstrumentor
from memspan.tracker import default_tracker_if_any


def test_instrument_uses_given_providers_and_uninstrument_removes_everything() -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    original_call = nn.Module.__call__
    hooks = (sys.excepthook,)
    instrumentor = MemspanInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            config=MemspanConfig(sample_interval_s=0.01))
    try:
        tracker = default_tracker_if_any()
        assert tracker is not None and tracker.sampler.running
        assert sys.excepthook != hooks[0]
        nn.Linear(4, 4)(torch.randn(2, 4))
        tracker.sampler.sample_once()
        tracker.flush()
        assert [s.name for s in exporter.get_finished_spans()] == ["forward"]
        assert names.PROCESS_MEMORY_USAGE in {
            m.name for rm in reader.get_metrics_data().resource_metrics  # type: ignore[union-attr]
            for sm in rm.scope_metrics for m in sm.metrics}
    finally:
        instrumentor.uninstrument()
    assert default_tracker_if_any() is None
    assert not tracker.sampler.running
    assert nn.Module.__call__ is original_call
    assert sys.excepthook == hooks[0]
    nn.Linear(4, 4)(torch.randn(2, 4))
    assert len(exporter.get_finished_spans()) == 1  # nothing new after uninstrument
    data = reader.get_metrics_data()
    observable = [m for rm in (data.resource_metrics if data else [])
                  for sm in rm.scope_metrics for m in sm.metrics
                  if m.name == names.PROCESS_MEMORY_USAGE and m.data.data_points]
    assert observable == []  # the callbacks went quiet


def test_a_bad_variable_disables_memspan_without_raising(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MEMSPAN_BUFFER_SIZE", "lots")
    instrumentor = MemspanInstrumentor()
    instrumentor.instrument(tracer_provider=TracerProvider(), meter_provider=MeterProvider())
    try:
        assert default_tracker_if_any() is None
    finally:
        instrumentor.uninstrument()
