"""The specification's synchronous ``OnEnd``: a span processor that may observe a span when it
ends has every phase span in ``on_end`` before the phase's exit returns, on every path.

Each test reads the exporter right after the block, with no flush of any kind, as the
OpenTelemetry SDK's own tests do.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from memspan import MemspanConfig, Tracker, names
from memspan.phases.span_path import DEFERRED, SDK, SYNC
from memspan.sources.host import HostMemorySource


class EndRecorder(SpanProcessor):
    """A user's processor that only looks at ended spans (a custom, unknown processor)."""

    def __init__(self) -> None:
        self.ended: list[tuple[str, int]] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.ended.append((span.name, threading.get_ident()))


class StartRecorder(EndRecorder):
    """A processor with work in on_start: phases become ordinary SDK spans."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        span.set_attribute("seen.at.start", True)


def tracker_on(provider: TracerProvider, **config: Any) -> Tracker:
    return Tracker(tracer_provider=provider, sources=[HostMemorySource()], start_sampler=False,
                   meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
                   config=MemspanConfig(**config))


@pytest.mark.parametrize(("requested", "expected"), [("deferred", SYNC), ("sync", SYNC),
                                                     ("sdk", SDK)])
def test_simple_span_processor_has_every_phase_span_when_the_block_exits(
        requested: str, expected: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracker = tracker_on(provider, span_mode=requested)
    try:
        assert tracker.span_path.mode == expected, tracker.span_path.reason
        with tracker.phase("train", epoch=1):
            with tracker.phase("forward"):
                pass
            assert [s.name for s in exporter.get_finished_spans()] == ["forward"]
        spans = {s.name: s for s in exporter.get_finished_spans()}
        assert list(spans) == ["forward", "train"]
        forward, train = spans["forward"], spans["train"]
        assert forward.parent is not None and forward.parent.span_id == train.context.span_id
        assert (train.attributes or {})["epoch"] == 1
        assert (forward.attributes or {})[names.PHASE_PATH] == "train / forward"
        assert (forward.attributes or {})[names.RSS_END] > 0  # exit figures, at the exit
    finally:
        tracker.shutdown()


@pytest.mark.parametrize(("kind", "mode"), [(EndRecorder, SYNC), (StartRecorder, SDK)])
def test_a_users_processor_sees_each_phase_end_on_the_thread_that_ended_it(
        kind: type[EndRecorder], mode: str) -> None:
    """Only ``on_end`` work: the span is built at the exit (``sync``); work in ``on_start``
    too: an ordinary SDK span, ended at the exit (``sdk``)."""
    provider = TracerProvider()
    recorder = kind()
    provider.add_span_processor(recorder)
    tracker = tracker_on(provider)
    try:
        assert tracker.span_path.mode == mode
        assert kind.__name__ in tracker.span_path.reason
        with tracker.phase("step"):
            pass
        assert recorder.ended == [("step", threading.get_ident())]
    finally:
        tracker.shutdown()


def test_a_simple_processor_added_after_the_tracker_still_gets_spans_at_the_exit() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    tracker = tracker_on(provider)
    try:
        assert tracker.span_path.mode == DEFERRED
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with tracker.phase("late"):
            pass
        assert [s.name for s in exporter.get_finished_spans()] == ["late"]
        assert tracker.span_path.mode == SYNC
    finally:
        tracker.shutdown()


def test_only_batch_processors_keep_the_deferred_path_and_flush_delivers_everything() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracker = tracker_on(provider)
    try:
        assert tracker.span_path.mode == DEFERRED
        for index in range(50):
            with tracker.phase("step", step=index):
                pass
        assert provider.force_flush()
        assert len(exporter.get_finished_spans()) == 50
    finally:
        tracker.shutdown()


def test_a_phase_span_ends_after_the_spans_of_other_instrumentations_inside_it() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracker = tracker_on(provider)
    other = provider.get_tracer("http")
    try:
        with tracker.phase("data"), other.start_as_current_span("GET /batch"):
            assert trace.get_current_span().get_span_context().is_valid
        names_in_order = [s.name for s in exporter.get_finished_spans()]
        assert names_in_order == ["GET /batch", "data"]
    finally:
        tracker.shutdown()
