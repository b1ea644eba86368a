"""Phases as OTel spans: attributes, nesting, exceptions, histograms and exemplars."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

import memspan
from conftest import Telemetry
from fakes import FakeCudaApi
from memspan import PhaseProtocolError, names
from memspan.sources.host import HostMemorySource
from memspan.sources.torch_allocator import TorchAllocatorSource


@pytest.fixture
def telemetry(telemetry_on_both_span_paths: Telemetry) -> Telemetry:
    """Every test here runs on both span paths (see conftest)."""
    return telemetry_on_both_span_paths



def test_phase_span_carries_the_contract_attributes(telemetry: Telemetry) -> None:
    tracker = telemetry.tracker
    with tracker.phase("train"), tracker.phase("  step  ", step=3):
        pass
    step = telemetry.span("step")
    train = telemetry.span("train")
    attrs = step.attributes or {}
    assert step.kind is SpanKind.INTERNAL
    assert attrs[names.PHASE_NAME] == "step"
    assert attrs[names.PHASE_PATH] == "train / step"
    assert attrs[names.PHASE_DEPTH] == 2
    assert attrs[names.SESSION_ID] == tracker.session_id
    assert re.fullmatch(rf"{tracker.session_id}:\d+", str(attrs[names.PHASE_SCOPE_ID]))
    assert attrs[names.PHASE_PARENT_SCOPE_ID] == (train.attributes or {})[names.PHASE_SCOPE_ID]
    assert names.PHASE_PARENT_SCOPE_ID not in (train.attributes or {})
    assert attrs[names.THREAD_ID] == threading.get_ident()
    assert attrs[names.THREAD_NAME] == threading.current_thread().name
    assert attrs["step"] == 3
    assert attrs[names.MEMORY_DEVICE] == "host"
    for key in (names.RSS_START, names.RSS_END, names.RSS_PEAK, names.RETAINED):
        assert isinstance(attrs[key], int), key
    assert isinstance(attrs[names.PEAK_EXACT], bool)
    assert attrs[names.RSS_PEAK] >= max(attrs[names.RSS_START], attrs[names.RSS_END])
    assert attrs[names.RETAINED] == attrs[names.RSS_END] - attrs[names.RSS_START]
    # allocator figures are absent (not zero) on a host without an initialised GPU
    assert names.ALLOCATED_START not in attrs
    # "step" starts its own trace (MEMSPAN_TRACE_ROOTS), linked to the enclosing phase
    assert step.parent is None and step.context.trace_id != train.context.trace_id
    assert [link.context.span_id for link in step.links] == [train.context.span_id]
    assert attrs[names.PHASE_TRACE_ROOT] is True
    assert telemetry.finished()[0].instrumentation_scope.name == "memspan"
    assert telemetry.finished()[0].resource is telemetry.tracer_provider.resource


def test_scope_ids_are_unique_and_increasing(telemetry: Telemetry) -> None:
    for _ in range(5):
        with telemetry.tracker.phase("p"):
            pass
    sequences = [int(str((s.attributes or {})[names.PHASE_SCOPE_ID]).rsplit(":", 1)[1])
                 for s in telemetry.finished()]
    assert sequences == sorted(set(sequences))


def test_histograms_are_recorded_with_exemplars_of_the_phase_span(telemetry: Telemetry) -> None:
    with telemetry.tracker.phase("outer"), telemetry.tracker.phase("inner"):
        pass
    spans = {s.context.span_id: s for s in telemetry.finished()}
    metrics = telemetry.metrics()
    for metric_name, unit in ((names.PHASE_DURATION, "s"), (names.PHASE_MEMORY_PEAK, "By")):
        metric = metrics[metric_name]
        assert metric.unit == unit
        points = {p.attributes[names.PHASE_PATH]: p for p in metric.data.data_points}
        assert set(points) == {"outer", "outer / inner"}
        for path, point in points.items():
            assert point.count == 1
            (exemplar,) = point.exemplars
            span = spans[exemplar.span_id]
            assert (span.attributes or {})[names.PHASE_PATH] == path
    peak_point = metrics[names.PHASE_MEMORY_PEAK].data.data_points[0]
    assert peak_point.attributes[names.MEMORY_DEVICE] == "host"


def test_exception_propagates_unchanged_and_is_recorded_once(telemetry: Telemetry) -> None:
    error = ValueError("bad batch")
    with pytest.raises(ValueError) as raised, telemetry.tracker.phase("outer"), \
            telemetry.tracker.phase("inner"):
        raise error
    assert raised.value is error
    for name in ("inner", "outer"):
        span = telemetry.span(name)
        events = [e for e in span.events if e.name == "exception"]
        assert len(events) == 1
        assert (events[0].attributes or {})["exception.type"] == "ValueError"
        assert (events[0].attributes or {})["exception.message"] == "bad batch"
        assert span.status.status_code is StatusCode.ERROR


def test_phase_is_current_span_so_other_spans_nest_under_it(telemetry: Telemetry) -> None:
    tracer = telemetry.tracer_provider.get_tracer("http-client")
    with telemetry.tracker.phase("fetch"), tracer.start_as_current_span("GET /data"), \
            telemetry.tracker.phase("parse"):
        pass
    fetch, http, parse = telemetry.span("fetch"), telemetry.span("GET /data"), telemetry.span("parse")
    assert http.parent is not None and http.parent.span_id == fetch.context.span_id
    assert parse.parent is not None and parse.parent.span_id == http.context.span_id
    assert (parse.attributes or {})[names.PHASE_PATH] == "fetch / parse"


def test_asyncio_tasks_each_have_their_own_stack(telemetry: Telemetry) -> None:
    tracker = telemetry.tracker

    async def worker(label: str) -> None:
        with tracker.phase(f"outer-{label}"):
            await asyncio.sleep(0.01)
            with tracker.phase(f"inner-{label}"):
                await asyncio.sleep(0.01)

    async def main() -> None:
        await asyncio.gather(worker("a"), worker("b"))

    asyncio.run(main())
    for label in ("a", "b"):
        inner = telemetry.span(f"inner-{label}")
        outer = telemetry.span(f"outer-{label}")
        assert inner.parent is not None and inner.parent.span_id == outer.context.span_id
        assert (inner.attributes or {})[names.PHASE_PATH] == f"outer-{label} / inner-{label}"
        assert outer.parent is None


def test_thread_pool_phase_is_a_root_unless_context_is_propagated(telemetry: Telemetry) -> None:
    tracker = telemetry.tracker

    def job(name: str) -> None:
        with tracker.phase(name):
            pass

    with tracker.phase("parent"), ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(job, "orphan").result()
        ctx = contextvars.copy_context()
        pool.submit(ctx.run, job, "propagated").result()
    parent = telemetry.span("parent")
    orphan = telemetry.span("orphan")
    propagated = telemetry.span("propagated")
    assert orphan.parent is None
    assert (orphan.attributes or {})[names.PHASE_PATH] == "orphan"
    assert propagated.parent is not None and propagated.parent.span_id == parent.context.span_id
    assert (propagated.attributes or {})[names.PHASE_PATH] == "parent / propagated"


def test_dead_thread_open_phase_does_not_capture_a_new_thread(telemetry: Telemetry) -> None:
    """A thread that died with a phase open, and a new thread that got the same ident: the
    new thread's phase is a root (nesting lives in the context, not in a per-ident stack)."""
    tracker = telemetry.tracker

    def run(target: Callable[[], None]) -> int:
        ident: list[int] = []

        def body() -> None:
            ident.append(threading.get_ident())
            target()

        thread = threading.Thread(target=body)
        thread.start()
        thread.join()
        return ident[0]

    for attempt in range(50):  # idents are reused once a thread is joined; not guaranteed
        dead = run(lambda: tracker.enter_phase("abandoned"))
        fresh_name = f"fresh-{attempt}"

        def fresh(name: str = fresh_name) -> None:
            with tracker.phase(name):
                pass

        if run(fresh) == dead:
            break
    else:
        pytest.skip("this platform gave a new thread a new ident 50 times in a row: the "
                    "ident-reuse case cannot be produced here")
    fresh_span = telemetry.span(fresh_name)
    assert fresh_span.parent is None
    assert (fresh_span.attributes or {})[names.PHASE_PATH] == fresh_name
    assert (fresh_span.attributes or {})[names.THREAD_ID] == dead  # the reused ident


def test_decorator_on_sync_and_async_functions(telemetry: Telemetry) -> None:
    tracker = telemetry.tracker

    @tracker.phase("sync-work", kind="sync")
    def sync_work(x: int) -> int:
        return x * 2

    @tracker.phase("async-work")
    async def async_work(x: int) -> int:
        await asyncio.sleep(0)
        return x + 1

    assert sync_work(2) == 4
    assert sync_work(3) == 6
    assert asyncio.run(async_work(1)) == 2
    assert len([s for s in telemetry.finished() if s.name == "sync-work"]) == 2
    assert (telemetry.span("async-work").attributes or {})[names.PHASE_PATH] == "async-work"
    assert sync_work.__name__ == "sync_work"


def test_enter_phase_handle_is_idempotent_and_a_context_manager(telemetry: Telemetry) -> None:
    handle = telemetry.tracker.enter_phase("manual", {"batch": 4})
    assert handle.phase_path == "manual"
    assert not handle.closed
    handle.close()
    handle.close()
    assert handle.closed
    assert len(telemetry.finished()) == 1
    with telemetry.tracker.enter_phase("managed") as managed:
        assert managed.phase_path == "managed"
    assert managed.closed
    assert (telemetry.span("manual").attributes or {})["batch"] == 4


def test_blank_and_non_string_names_are_rejected(telemetry: Telemetry) -> None:
    with pytest.raises(ValueError, match=r"must not be empty or blank"):
        telemetry.tracker.phase("   ").__enter__()
    with pytest.raises(TypeError, match=r"phase name must be a str, got int"):
        telemetry.tracker.enter_phase(3)  # type: ignore[arg-type]
    assert telemetry.finished() == []


def test_user_attributes_pass_stringify_or_are_rejected(
    telemetry: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    class Custom:
        def __str__(self) -> str:
            return "custom!"

    with caplog.at_level(logging.WARNING, logger="memspan"):
        with telemetry.tracker.phase("p", lr=0.1, tags=["a", "b"], ok=True, obj=Custom()):
            pass
        with telemetry.tracker.phase("q", obj=Custom()):
            pass
    attrs = telemetry.span("p").attributes or {}
    assert attrs["lr"] == 0.1
    assert tuple(attrs["tags"]) == ("a", "b")
    assert attrs["ok"] is True
    assert attrs["obj"] == "custom!"
    assert caplog.text.count("it was stringified") == 1
    assert telemetry.tracker.ledger.count("attribute_stringified") == 2
    with pytest.raises(ValueError, match=r"'memspan\.phase\.path' uses the reserved 'memspan\.'"):
        telemetry.tracker.enter_phase("r", {"memspan.phase.path": "spoof"})


def test_phase_object_cannot_be_entered_twice(telemetry: Telemetry) -> None:
    scope = telemetry.tracker.phase("once")
    with scope, pytest.raises(PhaseProtocolError, match=r"already entered"):
        scope.__enter__()


def test_module_level_api_uses_the_default_tracker(telemetry: Telemetry) -> None:
    from memspan.tracker import set_default_tracker

    previous = set_default_tracker(telemetry.tracker)
    try:
        with memspan.phase("module-level"):
            handle = memspan.enter_phase("handle")
            handle.close()
    finally:
        set_default_tracker(previous)
    assert (telemetry.span("handle").attributes or {})[names.PHASE_PATH] == "module-level / handle"


def test_gpu_figures_with_exact_peak_from_the_allocator(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    api = FakeCudaApi()
    api.allocate(1000)
    t = telemetry_factory(sources=[HostMemorySource(), TorchAllocatorSource(api)])
    with t.tracker.phase("forward"):
        api.allocate(5000)  # peak 6000 inside the phase
        api.free(4000)
    attrs = t.span("forward").attributes or {}
    assert attrs[names.MEMORY_DEVICE] == "cuda:0"
    assert attrs[names.ALLOCATED_START] == 1000
    assert attrs[names.ALLOCATED_END] == 2000
    assert attrs[names.ALLOCATED_PEAK] == 6000
    assert attrs[names.PEAK_EXACT] is True
    assert attrs[names.RETAINED] == 1000
    assert attrs[names.RESERVED_PEAK] == 6000
    assert not any("reset" in call for call in api.calls)
    peak = t.metrics()[names.PHASE_MEMORY_PEAK].data.data_points[0]
    assert peak.attributes[names.MEMORY_DEVICE] == "cuda:0"
    assert peak.sum == 6000


def test_gpu_peak_below_an_earlier_high_water_mark_is_marked_inexact(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    api = FakeCudaApi()
    api.allocate(10_000)
    api.free(10_000)  # the allocator's peak stays at 10_000
    source = TorchAllocatorSource(api)
    t = telemetry_factory(sources=[HostMemorySource(), source])
    with t.tracker.phase("small"):
        api.allocate(3000)
        t.tracker.sampler.sample_once()  # the sampler sees 3000 inside the phase
        api.free(3000)
    attrs = t.span("small").attributes or {}
    assert attrs[names.ALLOCATED_PEAK] == 3000
    assert attrs[names.PEAK_EXACT] is False
    assert attrs[names.RETAINED] == 0


def test_no_allocator_figures_until_cuda_is_initialised(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    api = FakeCudaApi(initialized=False)
    t = telemetry_factory(sources=[HostMemorySource(), TorchAllocatorSource(api)])
    with t.tracker.phase("cpu-only"):
        pass
    attrs = t.span("cpu-only").attributes or {}
    assert names.ALLOCATED_START not in attrs
    assert attrs[names.MEMORY_DEVICE] == "host"
    assert api.calls == []


def test_a_broken_cuda_context_never_breaks_the_program(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    class BrokenCuda(FakeCudaApi):
        def memory_stats_nested(self, device: int) -> Any:
            raise RuntimeError("CUDA error: device-side assert triggered")

    t = telemetry_factory(sources=[HostMemorySource(), TorchAllocatorSource(BrokenCuda())])
    error = ValueError("the user's own error")
    with pytest.raises(ValueError) as raised, t.tracker.phase("after-assert"):
        raise error
    assert raised.value is error
    with t.tracker.phase("next"):
        pass
    attrs = t.span("next").attributes or {}
    assert names.ALLOCATED_START not in attrs and names.RSS_START in attrs
    assert t.tracker.ledger.count("source_error") == 2
