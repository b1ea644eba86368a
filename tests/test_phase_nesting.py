"""Nesting never breaks the program: mis-nested closes, generators, recursion (issue: phase core).

Each case asserts what a user sees: no exception in their code, each phase ended with its own
figures, the mis-nesting counted and flagged on the span, and later phases with correct paths.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from conftest import Telemetry
from memspan import names
from memspan.drops import PHASE_MISNESTED, PHASE_PATH_TRUNCATED
from memspan.runtime import MAX_DEPTH


@pytest.fixture
def telemetry(telemetry_on_both_span_paths: Telemetry) -> Telemetry:
    """Every test here runs on both span paths (see conftest)."""
    return telemetry_on_both_span_paths



def _paths(telemetry: Telemetry) -> dict[str, str]:
    return {str((s.attributes or {})[names.PHASE_SCOPE_ID]): str(
        (s.attributes or {})[names.PHASE_PATH]) for s in telemetry.finished()}


def test_handles_closed_out_of_order_end_each_phase_and_flag_it(telemetry: Telemetry) -> None:
    tracker = telemetry.tracker
    outer = tracker.enter_phase("outer")
    inner = tracker.enter_phase("inner")
    outer.close()  # out of order: never raises
    assert outer.closed
    with tracker.phase("later"):  # opened while "inner" still runs: nests under it
        # "inner" still runs (its path was fixed when it opened); "outer" has ended
        assert tracker.current_phase_path() == "outer / inner / later"
    inner.close()
    assert tracker.current_phase() is None  # the context is back to before "outer"
    with tracker.phase("after"):
        assert tracker.current_phase_path() == "after"
    spans = {s.name: s for s in telemetry.finished()}
    assert set(spans) == {"outer", "inner", "later", "after"}
    assert (spans["outer"].attributes or {})[names.PHASE_MISNESTED] == "closed_out_of_order"
    assert names.PHASE_MISNESTED not in (spans["inner"].attributes or {})
    assert spans["outer"].end_time < spans["inner"].end_time  # each ended at its own exit
    assert names.RSS_END in (spans["outer"].attributes or {})
    assert tracker.ledger.count(PHASE_MISNESTED) == 1


def test_closing_from_another_thread_ends_the_phase_and_never_raises(telemetry: Telemetry) -> None:
    handle = telemetry.tracker.enter_phase("owned")
    errors: list[BaseException] = []

    def close_elsewhere() -> None:
        try:
            handle.close()
        except BaseException as error:
            errors.append(error)

    thread = threading.Thread(target=close_elsewhere, name="intruder")
    thread.start()
    thread.join()
    assert errors == []
    span = telemetry.span("owned")
    assert (span.attributes or {})[names.PHASE_MISNESTED] == "closed_on_another_thread"
    assert telemetry.tracker.ledger.count(PHASE_MISNESTED) == 1


def test_user_error_unwinding_a_misnested_phase_propagates_unchanged(telemetry: Telemetry) -> None:
    tracker = telemetry.tracker
    error = KeyError("user")
    with pytest.raises(KeyError) as raised, tracker.phase("doomed"):
        tracker.enter_phase("left-open")  # never closed
        raise error
    assert raised.value is error
    span = telemetry.span("doomed")
    assert span.status.status_code.name == "ERROR"
    assert (span.attributes or {})[names.PHASE_MISNESTED] == "closed_out_of_order"


def test_a_suspended_generator_phase_never_captures_the_consumer(telemetry: Telemetry) -> None:
    tracker = telemetry.tracker

    def batches() -> Iterator[int]:
        for index in range(3):
            with tracker.phase("load", batch=index):
                yield index  # suspended while "load" is open

    with tracker.phase("epoch"):
        for _ in batches():
            with tracker.phase("compute"):  # must not nest under the suspended "load"
                assert tracker.current_phase_path() == "epoch / compute"
        consumer = tracker.enter_phase("consumer")
        gen = batches()
        next(gen)  # "load" opens inside the generator, then the generator suspends
        consumer.close()  # the consumer's phase is innermost in its own flow: closes cleanly
        gen.close()  # the abandoned generator's phase ends now, with its own figures
    paths = sorted(_paths(telemetry).values())
    assert paths.count("epoch / compute") == 3
    assert paths.count("epoch / load") == 3
    assert "epoch / consumer" in paths and "epoch / consumer / load" in paths
    flagged = {s.name: (s.attributes or {}).get(names.PHASE_MISNESTED) for s in telemetry.finished()}
    assert flagged["compute"] is None and flagged["consumer"] is None
    assert tracker.current_phase() is None


def test_an_abandoned_generator_phase_closed_by_the_collector_is_flagged(telemetry: Telemetry) -> None:
    tracker = telemetry.tracker

    def stream() -> Iterator[int]:
        with tracker.phase("stream"):
            yield 1
            yield 2

    gen = stream()
    next(gen)
    with tracker.phase("work"):
        assert tracker.current_phase_path() == "work"
        del gen  # GeneratorExit closes "stream" while "work" is innermost
    spans = {s.name: s for s in telemetry.finished()}
    assert (spans["work"].attributes or {})[names.PHASE_PATH] == "work"
    assert spans["stream"].status.status_code.name == "UNSET"  # GeneratorExit is not an error


def test_recursion_deeper_than_the_path_limit_never_raises(telemetry: Telemetry) -> None:
    tracker = telemetry.tracker
    depth = MAX_DEPTH + 30
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, depth * 8))

    @tracker.phase("f")
    def recurse(n: int) -> int:
        return n if n == 0 else recurse(n - 1) + 1

    try:
        assert recurse(depth - 1) == depth - 1
    finally:
        sys.setrecursionlimit(limit)
    spans = telemetry.finished()
    assert len(spans) == depth
    deepest = max(spans, key=lambda s: int((s.attributes or {})[names.PHASE_DEPTH]))
    attrs = deepest.attributes or {}
    assert attrs[names.PHASE_DEPTH] == depth
    assert attrs[names.PHASE_PATH_TRUNCATED] is True
    assert str(attrs[names.PHASE_PATH]).count("f") == MAX_DEPTH
    assert tracker.ledger.count(PHASE_PATH_TRUNCATED) == depth - MAX_DEPTH


def test_decorated_generator_function_times_the_iteration(telemetry: Telemetry) -> None:
    tracker = telemetry.tracker

    @tracker.phase("produce")
    def produce(n: int) -> Iterator[int]:
        for index in range(n):
            with tracker.phase("item"):
                yield index

    gen = produce(3)
    assert telemetry.finished() == []  # creating the generator opens nothing
    with tracker.phase("consume"):
        assert list(gen) == [0, 1, 2]
    spans = {s.name: s for s in telemetry.finished()}
    assert (spans["produce"].attributes or {})[names.PHASE_PATH] == "consume / produce"
    items = [s for s in telemetry.finished() if s.name == "item"]
    assert [(s.attributes or {})[names.PHASE_PATH] for s in items] == ["consume / produce / item"] * 3
    assert spans["produce"].end_time >= max(s.end_time for s in items)


def test_decorated_async_generator_times_the_iteration_and_passes_throws(
    telemetry: Telemetry,
) -> None:
    tracker = telemetry.tracker
    seen: list[str] = []

    @tracker.phase("ticks")
    async def ticks() -> AsyncIterator[int]:
        try:
            for index in range(5):
                yield index
        except ValueError as error:
            seen.append(str(error))
            yield -1

    async def main() -> list[int]:
        out = []
        agen = ticks()
        out.append(await agen.__anext__())
        out.append(await agen.athrow(ValueError("stop")))
        await agen.aclose()
        return out

    assert asyncio.run(main()) == [0, -1]
    assert seen == ["stop"]
    span = telemetry.span("ticks")
    assert span.status.status_code.name == "UNSET"


def test_breaking_out_of_a_decorated_async_generator_is_a_normal_end(telemetry: Telemetry) -> None:
    tracker = telemetry.tracker

    @tracker.phase("ticks")
    async def ticks() -> AsyncIterator[int]:
        for index in range(10):
            yield index

    async def main() -> None:
        async for index in ticks():
            if index == 2:
                break  # asyncio's finalizer closes the generator later, in its own task

    asyncio.run(main())
    span = telemetry.span("ticks")
    assert names.PHASE_MISNESTED not in (span.attributes or {})
    assert tracker.ledger.count(PHASE_MISNESTED) == 0


def test_a_step_kept_for_an_error_still_records_its_peak(telemetry_factory: Any) -> None:
    from memspan import MemspanConfig

    t = telemetry_factory(config=MemspanConfig(step_keep_every=1000, step_keep_first=0),
                          batched=True)
    reasons = []
    for step in range(4):
        try:
            with t.tracker.phase("step", step=step):
                if step == 0:
                    raise ValueError("first step fails")
        except ValueError:
            pass
    for span in t.finished():
        reasons.append((span.attributes or {}).get(names.STEP_KEEP_REASON))
    # the error step also set the path's peak: the next ordinary steps are not "new peaks"
    assert reasons == ["error"], reasons
