"""Leak/plateau verdicts: one function, signed deltas, validated thresholds, live events."""

from __future__ import annotations

import mmap

import pytest

from conftest import Telemetry
from memspan import ConfigError, names
from memspan.analysis import LeakThresholds, RunSeries, verdict_for
from memspan.analysis.verdicts import BADGES

MIB = 1 << 20


def series(pairs: list[tuple[int, int]]) -> RunSeries:
    s = RunSeries()
    for start, end in pairs:
        s.add(start, end)
    return s


def test_linear_growth_is_leaking() -> None:
    verdict = verdict_for(series([(i * 5 * MIB, (i + 1) * 5 * MIB) for i in range(8)]))
    assert verdict.verdict == "leaking" and verdict.badge == BADGES["leaking"]
    assert verdict.slope_bytes_per_run == pytest.approx(5 * MIB)
    assert verdict.r2 == pytest.approx(1.0)
    assert verdict.retained_total == 40 * MIB


def test_flat_memory_is_leak_free_even_with_noise() -> None:
    noise = [0, 300_000, -200_000, 100_000, -50_000, 250_000, 0, -100_000]
    pairs = [(100 * MIB, 100 * MIB + n) for n in noise]
    verdict = verdict_for(series(pairs))
    assert verdict.verdict == "leak-free"
    # signed deltas: freed memory counts against kept memory (no clamping at zero)
    assert verdict.retained_total == sum(noise)


def test_allocate_once_and_hold_is_a_plateau() -> None:
    pairs = [(0, 128 * MIB)] + [(128 * MIB, 128 * MIB)] * 7
    verdict = verdict_for(series(pairs))
    assert verdict.verdict == "plateau"
    assert verdict.held_bytes == 128 * MIB


def test_too_few_runs_are_leak_free() -> None:
    assert verdict_for(series([(i * 50 * MIB, (i + 1) * 50 * MIB) for i in range(4)])).verdict == "leak-free"


def test_held_memory_that_does_not_follow_a_line_is_not_a_leak() -> None:
    retained = [80, -80, 90, -90, 85, -85, 95, -95]  # grabs and gives back
    verdict = verdict_for(series([(100 * MIB, (100 + r) * MIB) for r in retained]),
                          LeakThresholds(slope_bytes_per_run=1))
    assert verdict.r2 < 0.8 and verdict.verdict == "leak-free"


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("MEMSPAN_LEAK_MIN_RUNS", "two", "MEMSPAN_LEAK_MIN_RUNS='two' is not an integer; accepted: an integer >= 3"),
    ("MEMSPAN_LEAK_MIN_RUNS", "2", "MEMSPAN_LEAK_MIN_RUNS='2' is out of range; accepted: an integer >= 3"),
    ("MEMSPAN_LEAK_SLOPE_BYTES", "-1", "MEMSPAN_LEAK_SLOPE_BYTES='-1' is out of range; accepted: a number of bytes > 0"),
    ("MEMSPAN_LEAK_MIN_R2", "1.5", "MEMSPAN_LEAK_MIN_R2='1.5' is out of range; accepted: a number in [0, 1]"),
    ("MEMSPAN_PLATEAU_BYTES", "lots", "MEMSPAN_PLATEAU_BYTES='lots' is not an integer; accepted: an integer number of bytes > 0"),
])
def test_threshold_overrides_are_validated(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        LeakThresholds.from_env({variable: value})
    assert str(raised.value) == message


def test_threshold_overrides_apply() -> None:
    limits = LeakThresholds.from_env({"MEMSPAN_LEAK_MIN_RUNS": "10", "MEMSPAN_LEAK_MIN_R2": "0.5"})
    assert limits.min_runs == 10 and limits.min_r2 == 0.5


def test_live_leak_event_once_per_path(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    t: Telemetry = telemetry_factory(leak_thresholds=LeakThresholds(slope_bytes_per_run=1 * MIB))
    kept = []

    def resident_block() -> mmap.mmap:  # anonymous mmap: returned to the OS when closed
        block = mmap.mmap(-1, 4 * MIB)
        for offset in range(0, 4 * MIB, 4096):
            block[offset] = 1
        return block

    for _ in range(9):
        with t.tracker.phase("load"):
            kept.append(resident_block())
        with t.tracker.phase("clean"):
            resident_block().close()
    events = [(s.attributes or {}).get(names.PHASE_PATH) for s in t.finished()
              for e in s.events if e.name == names.LEAK_EVENT]
    assert events == ["load"]
    (span,) = [s for s in t.finished() if any(e.name == names.LEAK_EVENT for e in s.events)]
    (event,) = span.events
    assert (event.attributes or {})[names.LEAK_RUNS] >= 5
    assert (event.attributes or {})[names.LEAK_SLOPE] >= 3 * MIB
