from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from memspan import Tracker
from memspan.sources.host import HostMemorySource

sys.path.insert(0, str(Path(__file__).parent))


@dataclass
class Telemetry:
    """A tracker wired to in-memory SDK exporters."""

    tracker: Tracker
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    #: spans reach the exporter through a BatchSpanProcessor (the deferred path)
    batched: bool = False

    def finished(self) -> list[ReadableSpan]:
        """The spans the exporter holds now. No flush: with a synchronous processor every
        phase span is there when the phase exits; behind a batch processor, the provider's
        ``force_flush()`` delivers them, as for any span."""
        if self.batched:
            self.tracer_provider.force_flush()
        return list(self.spans.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        matches = [s for s in self.finished() if s.name == name]
        assert len(matches) == 1, f"expected one span {name!r}, got {len(matches)}"
        return matches[0]

    def metrics(self) -> dict[str, Any]:
        self.tracker.flush()
        data: MetricsData | None = self.reader.get_metrics_data()
        out: dict[str, Any] = {}
        if data is None:
            return out
        for rm in data.resource_metrics:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    out[metric.name] = metric
        return out


def make_telemetry(*, batched: bool = False, **tracker_kwargs: Any) -> Telemetry:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter) if batched
                                       else SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    tracker_kwargs.setdefault("start_sampler", False)
    tracker_kwargs.setdefault("sources", [HostMemorySource()])
    tracker = Tracker(tracer_provider=tracer_provider, meter_provider=meter_provider,
                      **tracker_kwargs)
    return Telemetry(tracker, exporter, reader, tracer_provider, batched)


@pytest.fixture(autouse=True)
def _fresh_otel_context() -> Iterator[None]:
    """Each test starts with an empty OpenTelemetry context and leaves none behind (a test of
    a phase closed on another thread leaves the opener's context pointing at it, by design)."""
    from opentelemetry import context as otel_context
    from opentelemetry.context import Context

    token = otel_context.attach(Context())
    yield

    otel_context._RUNTIME_CONTEXT._current_context.reset(token)  # type: ignore[attr-defined]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    t = make_telemetry()
    yield t
    t.tracker.shutdown()


@pytest.fixture(params=["deferred", "sync", "sdk"])
def telemetry_on_both_span_paths(request: pytest.FixtureRequest) -> Iterator[Telemetry]:
    """A telemetry fixture for modules whose tests must hold on every span path: spans built
    off the caller's thread (behind a batch processor), spans built at the phase's exit (a
    synchronous processor), and ordinary SDK spans (the fallback). A module opts in by
    defining its ``telemetry`` fixture as this one."""
    from memspan import MemspanConfig

    requested = "deferred" if request.param == "sync" else request.param
    t = make_telemetry(config=MemspanConfig(span_mode=requested),
                       batched=request.param == "deferred")
    assert t.tracker.span_path.mode == request.param, t.tracker.span_path.reason
    yield t
    t.tracker.shutdown()


@pytest.fixture
def telemetry_factory() -> Iterator[Any]:
    made: list[Telemetry] = []

    def factory(**kwargs: Any) -> Telemetry:
        t = make_telemetry(**kwargs)
        made.append(t)
        return t

    yield factory
    for t in made:
        t.tracker.shutdown()
