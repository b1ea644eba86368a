"""How phase spans reach the provider: deferred (built off the caller's thread), sync, sdk."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.sdk.trace.sampling import ALWAYS_ON as ALWAYS_ON_SAMPLER
from opentelemetry.trace import NoOpTracerProvider

from conftest import make_telemetry
from memspan import MemspanConfig, Tracker, names
from memspan.phases.span_path import DEFERRED, SDK, SYNC, resolve
from memspan.sources.host import HostMemorySource


def test_behind_a_batch_processor_the_path_is_deferred_and_delivers_on_flush() -> None:
    t = make_telemetry(batched=True)
    try:
        assert t.tracker.span_path.mode == DEFERRED
        with t.tracker.phase("work"):
            pass
        assert t.spans.get_finished_spans() == ()  # not built on the caller's thread
        assert t.tracer_provider.force_flush()  # the provider's own flush delivers it
        (span,) = t.spans.get_finished_spans()
        assert span.name == "work" and (span.attributes or {})[names.PHASE_PATH] == "work"
    finally:
        t.tracker.shutdown()


def test_provider_shutdown_delivers_pending_phases_before_the_exporters_close() -> None:
    t = make_telemetry(batched=True)
    with t.tracker.phase("last"):
        pass
    t.tracer_provider.shutdown()
    assert [s.name for s in t.spans.get_finished_spans()] == ["last"]
    t.tracker.shutdown()


def test_sync_mode_exports_at_the_phase_exit() -> None:
    t = make_telemetry(config=MemspanConfig(span_mode="sync"))
    try:
        assert t.tracker.span_path.mode == SYNC
        with t.tracker.phase("strict"):
            pass
        assert [s.name for s in t.spans.get_finished_spans()] == ["strict"]
    finally:
        t.tracker.shutdown()


class StartWork(SpanProcessor):
    """A user's processor that does work in on_start (e.g. copies baggage to attributes)."""

    def __init__(self) -> None:
        self.started: list[str] = []

    def on_start(self, span: Any, parent_context: Context | None = None) -> None:
        self.started.append(span.name)
        span.set_attribute("team", "vision")


def test_a_processor_with_on_start_work_gets_ordinary_sdk_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    starter = StartWork()
    provider.add_span_processor(starter)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracker = Tracker(tracer_provider=provider, sources=[HostMemorySource()], start_sampler=False)
    try:
        assert tracker.span_path.mode == SDK
        assert "StartWork does work in on_start" in tracker.span_path.reason
        with tracker.phase("outer"), tracker.phase("inner"):
            pass
        tracker.flush()
        spans = {s.name: s for s in exporter.get_finished_spans()}
        assert starter.started == ["outer", "inner"]
        assert (spans["inner"].attributes or {})["team"] == "vision"
        assert (spans["inner"].attributes or {})[names.PHASE_PATH] == "outer / inner"
        assert names.RSS_END in (spans["inner"].attributes or {})
        assert spans["inner"].parent is not None
        assert spans["inner"].parent.span_id == spans["outer"].context.span_id
    finally:
        tracker.shutdown()


def test_a_provider_that_is_not_the_sdks_falls_back_and_still_nests() -> None:
    tracker = Tracker(tracer_provider=NoOpTracerProvider(), sources=[HostMemorySource()],
                      start_sampler=False)
    try:
        assert tracker.span_path.mode == SDK and "not the OpenTelemetry SDK's" in tracker.span_path.reason
        with tracker.phase("a"), tracker.phase("b"):
            assert tracker.current_phase_path() == "a / b"
    finally:
        tracker.shutdown()


def test_unknown_mode_is_refused_with_the_accepted_values() -> None:
    with pytest.raises(ValueError, match="one of deferred, sync, sdk"):
        resolve(TracerProvider().get_tracer("x"), "fast")


@pytest.mark.parametrize("sampler", [ALWAYS_OFF, ParentBased(ALWAYS_OFF)])
def test_a_sampler_that_drops_everything_exports_no_phase(sampler: Any) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracker = Tracker(tracer_provider=provider, sources=[HostMemorySource()], start_sampler=False)
    try:
        with tracker.phase("train"), tracker.phase("step"), tracker.phase("forward"):
            from opentelemetry import trace

            span = trace.get_current_span()
            assert span.get_span_context().is_valid and not span.is_recording()
        tracker.flush()
        assert exporter.get_finished_spans() == ()
    finally:
        tracker.shutdown()


def test_the_ratio_sampler_decides_per_trace_and_children_follow() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.5)))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracker = Tracker(tracer_provider=provider, sources=[HostMemorySource()], start_sampler=False)
    try:
        for _ in range(60):
            with tracker.phase("job"), tracker.phase("part"):
                pass
        tracker.flush()
        spans = exporter.get_finished_spans()
        jobs = {s.context.trace_id for s in spans if s.name == "job"}
        parts = {s.context.trace_id for s in spans if s.name == "part"}
        assert jobs == parts  # a part is exported exactly when its job is
        assert 5 < len(jobs) < 55
    finally:
        tracker.shutdown()


def test_span_limits_of_the_provider_apply() -> None:
    from opentelemetry.sdk.trace import SpanLimits

    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_span_attribute_length=8))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracker = Tracker(tracer_provider=provider, sources=[HostMemorySource()], start_sampler=False)
    try:
        with tracker.phase("p", note="x" * 100):
            pass
        tracker.flush()
        (span,) = exporter.get_finished_spans()
        assert (span.attributes or {})["note"] == "x" * 8
    finally:
        tracker.shutdown()


def test_user_calls_on_the_current_span_land_in_the_exported_span() -> None:
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    t = make_telemetry()
    try:
        with t.tracker.phase("p"):
            span = trace.get_current_span()
            span.set_attribute("rows", 12)
            span.add_event("checkpoint", {"epoch": 3})
            span.set_status(Status(StatusCode.OK))
        exported = t.span("p")
        assert (exported.attributes or {})["rows"] == 12
        assert [(e.name, dict(e.attributes or {})) for e in exported.events] == [
            ("checkpoint", {"epoch": 3})]
        assert exported.status.status_code is StatusCode.OK
    finally:
        t.tracker.shutdown()


def test_a_processor_added_later_switches_new_phases_to_sdk_spans() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracker = Tracker(tracer_provider=provider, sources=[HostMemorySource()], start_sampler=False,
                      config=MemspanConfig(sample_interval_s=0.01))
    try:
        assert tracker.span_path.mode == DEFERRED
        starter = StartWork()
        provider.add_span_processor(starter)
        import time

        deadline = time.monotonic() + 10
        while tracker.span_path.mode != SDK and time.monotonic() < deadline:
            time.sleep(0.01)  # the export worker re-checks the processors before each drain
        assert tracker.span_path.mode == SDK
        with tracker.phase("later"):
            pass
        assert provider.force_flush()
        assert starter.started == ["later"]
        assert [s.name for s in exporter.get_finished_spans()] == ["later"]
    finally:
        tracker.shutdown()


def test_the_default_sampler_shortcut_decides_as_the_sdk_would() -> None:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.sdk.trace.sampling import DEFAULT_ON
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    from memspan.phases.span_path import follows_parent

    assert follows_parent(DEFAULT_ON) and follows_parent(ParentBased(ALWAYS_ON_SAMPLER))
    assert not follows_parent(ParentBased(TraceIdRatioBased(0.5)))
    assert not follows_parent(ParentBased(ALWAYS_ON_SAMPLER, local_parent_not_sampled=ALWAYS_ON_SAMPLER))
    t = make_telemetry()
    try:
        state = TraceState([("vendor", "x")])
        for sampled in (True, False):  # a remote parent (propagated from another service)
            remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_state=state,
                                 trace_flags=TraceFlags(TraceFlags.SAMPLED if sampled else 0))
            token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(remote)))
            try:
                with t.tracker.phase(f"child-{sampled}"):
                    span = trace.get_current_span()
                    context = span.get_span_context()
                    assert context.trace_id == 0xABC and context.trace_state == state
                    assert context.trace_flags.sampled is sampled
                    assert span.is_recording() is sampled
            finally:
                otel_context.detach(token)
        assert [s.name for s in t.finished()] == ["child-True"]
    finally:
        t.tracker.shutdown()
