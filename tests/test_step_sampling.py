"""One trace per step, and memory-aware step sampling (which step traces are exported)."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Telemetry
from memspan import MemspanConfig, names
from memspan.phases.step_sampling import StepSampler, StepSamplingConfig


@pytest.fixture
def telemetry(telemetry_on_both_span_paths: Telemetry) -> Telemetry:
    """Every test here runs on both span paths (see conftest)."""
    return telemetry_on_both_span_paths



def _by_name(telemetry: Telemetry, name: str) -> list[Any]:
    return [s for s in telemetry.finished() if s.name == name]


def test_each_step_is_its_own_trace_linked_to_the_enclosing_phase(telemetry: Telemetry) -> None:
    tracker = telemetry.tracker
    with tracker.phase("train"):
        for step in range(3):
            with tracker.phase("step", step=step), tracker.phase("forward"):
                pass
    (train,) = _by_name(telemetry, "train")
    steps = _by_name(telemetry, "step")
    forwards = _by_name(telemetry, "forward")
    trace_ids = {s.context.trace_id for s in steps}
    assert len(trace_ids) == 3 and train.context.trace_id not in trace_ids
    for step in steps:
        assert step.parent is None
        assert [link.context.span_id for link in step.links] == [train.context.span_id]
        assert (step.attributes or {})[names.PHASE_PATH] == "train / step"
        assert (step.attributes or {})[names.STEP_KEEP_REASON] == "all"
    for forward in forwards:  # children stay in their step's trace
        assert forward.context.trace_id in trace_ids
        assert (forward.attributes or {})[names.PHASE_PATH] == "train / step / forward"


def test_trace_root_argument_and_the_configured_names(telemetry_factory: Any) -> None:
    t = telemetry_factory(config=MemspanConfig(trace_roots="batch, request"))
    tracker = t.tracker
    with tracker.phase("serve"):
        with tracker.phase("request"):
            pass
        with tracker.phase("step"):  # not a configured root here
            pass
        with tracker.phase("custom", trace_root=True):
            pass
        with tracker.phase("batch", trace_root=False):  # the argument wins
            pass
    spans = {s.name: s for s in t.finished()}
    serve = spans["serve"].context.trace_id
    assert spans["request"].context.trace_id != serve
    assert spans["custom"].context.trace_id != serve
    assert spans["step"].context.trace_id == serve
    assert spans["batch"].context.trace_id == serve


def test_a_step_under_another_instrumentations_span_stays_in_its_trace(telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("http-server")
    with tracer.start_as_current_span("POST /infer") as request, telemetry.tracker.phase("step"):
        pass
    (step,) = _by_name(telemetry, "step")
    assert step.context.trace_id == request.get_span_context().trace_id
    assert step.parent is not None and step.parent.span_id == request.get_span_context().span_id


def _sampled(telemetry_factory: Any, **config: Any) -> Telemetry:
    settings = {"step_keep_every": 10, "step_keep_first": 2, "step_peak_increase_mb": 4.0}
    settings.update(config)
    # step sampling drops spans: only where they are built later (behind a batch processor)
    return telemetry_factory(config=MemspanConfig(**settings), batched=True)  # type: ignore[no-any-return]


def _step_counts(t: Telemetry) -> dict[tuple[str, str], int]:
    metric = t.metrics()[names.STEP_COUNT]
    return {(str(p.attributes[names.STEP_DECISION]), str(p.attributes[names.STEP_KEEP_REASON])):
            int(p.value) for p in metric.data.data_points}


def test_clean_steps_keep_the_first_and_one_in_n(telemetry_factory: Any) -> None:
    t = _sampled(telemetry_factory)
    for step in range(42):
        with t.tracker.phase("step", step=step), t.tracker.phase("forward"):
            pass
    reasons = {int((s.attributes or {})["step"]): (s.attributes or {})[names.STEP_KEEP_REASON]
               for s in _by_name(t, "step")}
    kept = sorted(reasons)
    # the first step sets the path's first peak; the second is kept as one of the first two;
    # then one step in ten of the rest (RSS may set one more new peak on a loaded machine)
    assert reasons[0] == "new_peak" and reasons[1] == "first"
    assert [reasons[s] for s in (11, 21, 31, 41)] == ["sampled"] * 4
    assert len(kept) <= 7
    assert len(_by_name(t, "forward")) == len(kept)  # a step is exported whole or not at all
    counts = _step_counts(t)
    assert sum(v for (decision, _), v in counts.items() if decision == "kept") == len(kept)
    assert counts[("dropped", "dropped")] == 42 - len(kept)
    # every phase still counts in the histograms, kept or not
    duration = t.metrics()[names.PHASE_DURATION]
    by_path = {p.attributes[names.PHASE_PATH]: p for p in duration.data.data_points}
    assert by_path["step / forward"].count == 42 and by_path["step"].count == 42
    exported = {s.context.span_id for s in t.finished()}
    for point in duration.data.data_points:
        for exemplar in point.exemplars:  # exemplars never point at a dropped span
            assert exemplar.span_id in exported


def test_error_oom_foreign_and_new_peak_steps_are_always_kept(telemetry_factory: Any) -> None:
    t = _sampled(telemetry_factory)
    tracker = t.tracker
    tracer = t.tracer_provider.get_tracer("db-client")
    hold: list[bytearray] = []
    for step in range(30):
        try:
            with tracker.phase("step", step=step):
                if step == 7:
                    raise ValueError("bad batch")
                if step == 11:
                    raise MemoryError("host out of memory")
                if step == 15:
                    with tracer.start_as_current_span("SELECT batch"):
                        pass
                if step == 19:
                    block = bytearray(64 << 20)
                    block[::4096] = b"x" * len(block[::4096])  # touch the pages
                    hold.append(block)
                    hold.clear()
        except (ValueError, MemoryError):
            pass
    reasons = {int((s.attributes or {})["step"]): (s.attributes or {})[names.STEP_KEEP_REASON]
               for s in _by_name(t, "step")}
    assert reasons[7] == "error"
    assert reasons[11] == "oom"
    assert reasons[15] == "foreign"
    assert reasons[19] == "new_peak"
    (select,) = _by_name(t, "SELECT batch")
    step_15 = next(s for s in _by_name(t, "step") if (s.attributes or {})["step"] == 15)
    assert select.parent is not None and select.parent.span_id == step_15.context.span_id


def test_the_sampler_decides_from_records_alone() -> None:
    sampler = StepSampler(StepSamplingConfig(keep_every=3, keep_first=0))
    assert not sampler.keeps_all
    with pytest.raises(ValueError, match="keep_every=0 must be >= 1"):
        StepSamplingConfig(keep_every=0)
