"""Verdicts: one function, signed deltas, thresholds that scale, evidence, validated overrides."""

from __future__ import annotations

import math
import mmap
import random

import pytest

from conftest import Telemetry
from memspan import ConfigError, names
from memspan.analysis import LeakThresholds, RunSeries, verdict_for
from memspan.analysis.verdicts import (
    BADGES,
    CRITICAL_BADGE,
    INSUFFICIENT,
    Outcome,
    Verdict,
    page_badge,
)

KIB = 1 << 10
MIB = 1 << 20


def series(pairs: list[tuple[int, int]], peaks: list[int] | None = None) -> RunSeries:
    s = RunSeries()
    for index, (start, end) in enumerate(pairs):
        s.add(start, end, None if peaks is None else peaks[index])
    return s


def chain(kept: list[int], base: int = 300 * MIB, work: int = 0) -> RunSeries:
    """Runs back to back: each keeps ``kept[i]`` and peaks ``work`` above its start."""
    s = RunSeries()
    level = base
    for k in kept:
        s.add(level, level + k, level + max(work, k), exact=True)
        level += k
    return s


def test_per_step_leak_of_412_kib_for_300_steps_is_leaking() -> None:
    # The case: 130.6 MiB over 300 steps, R² 1.00, was called a plateau (slope < 1 MiB).
    rng = random.Random(7)
    kept = [412 * KIB + rng.randrange(-8, 9) * 4 * KIB for _ in range(300)]
    verdict = verdict_for(chain(kept, work=4 * MIB))
    assert verdict.verdict == "leaking" and verdict.badge == "LEAK SUSPECTED"
    assert verdict.slope_bytes_per_run == pytest.approx(412 * KIB, rel=0.02)
    assert verdict.r2 > 0.99 and verdict.runs == 300
    assert verdict.held_bytes == sum(kept)
    assert verdict.evidence.startswith("Grew 120.")
    assert "over 300 runs" in verdict.evidence and "R² 1.00" in verdict.evidence
    assert "a leak is growth of at least 4.0 MiB over the runs" in verdict.evidence


def test_the_same_leak_over_few_runs_is_not_enough() -> None:
    # The threshold scales with the run count: 5 x 412 KiB = 2 MiB is under the 4 MiB floor.
    # Steady growth under the threshold is neither a plateau nor leak-free: more runs needed.
    verdict = verdict_for(chain([412 * KIB] * 5, work=4 * MIB))
    assert verdict.verdict == "insufficient data"
    assert verdict.evidence == ("Grows steadily (412.0 KiB/run, R² 1.00) but only 1.6 MiB over "
                                "5 runs, under the 4.0 MiB a leak needs: more runs are needed "
                                "for a verdict.")


def test_leak_threshold_scales_with_the_paths_own_size() -> None:
    kept = [1 * MIB] * 20  # 19 MiB of fitted growth
    small = verdict_for(chain(kept, work=2 * MIB))
    big = verdict_for(chain(kept, work=1024 * MIB))  # 10% of 1 GiB = 102 MiB needed
    assert small.verdict == "leaking"
    assert big.verdict != "leaking"
    assert big.growth_threshold_bytes == pytest.approx(0.1 * 1024 * MIB)


def test_cache_filled_once_is_a_critical_plateau_however_few_mib() -> None:
    # The seed's forgotten cache: ~5,000 records (a few MiB) in the first run, 0 MB after.
    kept = [5 * MIB + 400 * KIB, 0, 4 * KIB, 0, -4 * KIB, 0, 8 * KIB, 0]
    verdict = verdict_for(chain(kept, base=30 * MIB, work=5 * MIB + 400 * KIB))
    assert verdict.verdict == "plateau" and verdict.critical
    assert verdict.badge == CRITICAL_BADGE == "HIGH MEMORY PLATEAU · CRITICAL BLOAT"
    assert verdict.evidence.startswith("Holds 5.4 MiB after 8 runs, not growing (")
    assert "): 100% of its 5.4 MiB working memory, 15% of the 35.4 MiB process;" in verdict.evidence
    assert "critical bloat" in verdict.evidence


def test_allocate_once_and_hold_is_a_plateau() -> None:
    verdict = verdict_for(series([(0, 128 * MIB)] + [(128 * MIB, 128 * MIB)] * 7))
    assert verdict.verdict == "plateau" and verdict.held_bytes == 128 * MIB


def test_a_plateau_small_against_its_path_but_large_in_bytes_is_not_critical() -> None:
    # 100 MiB kept by a path that works with 1 GiB, in a 4 GiB process: a plateau, no alert.
    s = chain([100 * MIB] + [0] * 9, base=4096 * MIB, work=1024 * MIB)
    verdict = verdict_for(s)
    assert verdict.verdict == "plateau" and not verdict.critical
    assert verdict.badge == BADGES["plateau"]


def test_allocator_retention_after_a_clean_run_is_leak_free() -> None:
    # Scenario B as measured: 1.2 MiB of the 5.6 MiB the run used stays with the allocator.
    kept = [1_179_648, 24_576, 0, 12_288, 8_192, 0, 4_096, 8_192]
    peaks = [5_873_664] + [0] * 7
    s = RunSeries()
    level = 29 * MIB
    for k, p in zip(kept, peaks, strict=True):
        s.add(level, level + k, level + max(p, k), exact=p > 0)
        level += k
    verdict = verdict_for(s)
    assert verdict.verdict == "leak-free" and verdict.badge == "CERTIFIED LEAK-FREE"
    assert "under the leak threshold" in verdict.evidence


def test_without_an_exact_peak_a_plateau_is_judged_against_the_process() -> None:
    # Measured (Scenario B): no run raised the high-water mark, so each peak equals the end
    # reading and tells nothing of the 5 MiB the run used: 2 MiB of a 32 MiB process stays.
    edges = [(30404, 32028), (32156, 32580), (32580, 32600), (32600, 32608), (32608, 32608),
             (32608, 32608), (32608, 32612), (32612, 32624)]
    s = RunSeries()
    for start, end in edges:
        s.add(start * KIB, end * KIB, end * KIB, exact=False)
    clean = verdict_for(s)
    assert clean.verdict == "leak-free"
    assert "its working memory not known exactly (no exact peak)" in clean.evidence
    cache = RunSeries()  # the forgotten cache, measured the same way: 5.4 MiB of 35 MiB
    for start, end in [(29 * MIB, 34 * MIB + 400 * KIB)] + [(34 * MIB + 400 * KIB,) * 2] * 7:
        cache.add(start, end, end, exact=False)
    held = verdict_for(cache)
    assert held.verdict == "plateau" and held.critical


def test_flat_memory_is_leak_free_even_with_noise() -> None:
    noise = [0, 300_000, -200_000, 100_000, -50_000, 250_000, 0, -100_000]
    verdict = verdict_for(series([(100 * MIB, 100 * MIB + n) for n in noise]))
    assert verdict.verdict == "leak-free"
    assert verdict.held_bytes == sum(noise)  # signed: freed memory counts against kept


def test_a_random_walk_of_noise_is_not_a_leak() -> None:
    leaks = 0
    for seed in range(40):
        rng = random.Random(seed)
        kept = [rng.choice((-1, 1)) * 2 * MIB for _ in range(300)]
        leaks += verdict_for(chain(kept, work=8 * MIB)).verdict == "leaking"
    assert leaks <= 1


def test_too_few_runs_are_insufficient_data_never_leak_free() -> None:
    verdict = verdict_for(series([(0, 34 * MIB)]))
    assert verdict.verdict == INSUFFICIENT == "insufficient data"
    assert verdict.badge == "INSUFFICIENT DATA"
    assert verdict.evidence == ("Ran once; a verdict needs at least 5 runs "
                                "(so far it holds 34.0 MiB).")
    four = verdict_for(series([(i * 50 * MIB, (i + 1) * 50 * MIB) for i in range(4)]))
    assert four.verdict == INSUFFICIENT


def test_held_memory_that_does_not_follow_a_line_is_not_a_leak() -> None:
    retained = [80, -80, 90, -90, 85, -85, 95, -95]  # grabs and gives back
    verdict = verdict_for(series([(100 * MIB, (100 + r) * MIB) for r in retained]),
                          LeakThresholds(slope_bytes_per_run=1))
    assert verdict.r2 < 0.8 and verdict.verdict == "leak-free"


def _verdict(name: str) -> Verdict:
    cases = {
        "leaking": chain([5 * MIB] * 8),
        "plateau": chain([10 * MIB] + [0] * 7, work=10 * MIB),
        "leak-free": chain([0] * 8, work=10 * MIB),
        INSUFFICIENT: chain([0] * 2),
    }
    return verdict_for(cases[name])


def test_the_badge_is_the_worst_judged_verdict_and_never_green_without_one() -> None:
    assert page_badge([_verdict("leak-free"), _verdict("leaking")], None).text == "LEAK SUSPECTED"
    green = page_badge([_verdict("leak-free"), _verdict(INSUFFICIENT)], None)
    assert green.text == "CERTIFIED LEAK-FREE" and green.color == "#2e7d32"
    alone = page_badge([_verdict(INSUFFICIENT)], None)
    assert alone.text == "INSUFFICIENT DATA" and alone.color != "#2e7d32"
    assert page_badge([], None).key == INSUFFICIENT


def test_a_killed_run_is_red_and_says_what_happened() -> None:
    killed = page_badge([_verdict("leak-free")], Outcome(-9, "SIGKILL", True, "likely",
                                                          "the child was killed by SIGKILL"))
    assert killed.text == "KILLED BY SIGKILL · OOM LIKELY" and killed.color == "#b71c1c"
    assert killed.sentence.startswith("The job did not finish normally: the child was killed")
    failed = page_badge([], Outcome(1, None, False, None, "exit status 1"))
    assert failed.text == "FAILED (EXIT 1)" and failed.key == "failed"


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("MEMSPAN_LEAK_MIN_RUNS", "two", "MEMSPAN_LEAK_MIN_RUNS='two' is not an integer; accepted: an integer in [3, 1000000]"),
    ("MEMSPAN_LEAK_MIN_RUNS", "2", "MEMSPAN_LEAK_MIN_RUNS=2 is out of range; accepted: an integer in [3, 1000000]"),
    ("MEMSPAN_LEAK_SLOPE_BYTES", "-1", "MEMSPAN_LEAK_SLOPE_BYTES=-1.0 is out of range; accepted: a number of bytes in [1, 1125899906842624]"),
    ("MEMSPAN_LEAK_SLOPE_BYTES", "inf", "MEMSPAN_LEAK_SLOPE_BYTES=inf is not a finite number; accepted: a number of bytes in [1, 1125899906842624]"),
    ("MEMSPAN_LEAK_MIN_R2", "1.5", "MEMSPAN_LEAK_MIN_R2=1.5 is out of range; accepted: a number in [0, 1]"),
    ("MEMSPAN_LEAK_MIN_R2", "nan", "MEMSPAN_LEAK_MIN_R2=nan is not a finite number; accepted: a number in [0, 1]"),
    ("MEMSPAN_PLATEAU_BYTES", "lots", "MEMSPAN_PLATEAU_BYTES='lots' is not an integer; accepted: an integer in [1, 1125899906842624]"),
])
def test_threshold_overrides_are_validated(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        LeakThresholds.from_env({variable: value})
    assert str(raised.value) == message


def test_threshold_overrides_apply() -> None:
    limits = LeakThresholds.from_env({"MEMSPAN_LEAK_MIN_RUNS": "10", "MEMSPAN_LEAK_MIN_R2": "0.5"})
    assert limits.min_runs == 10 and limits.min_r2 == 0.5
    with pytest.raises(ConfigError, match="plateau_share=0 is out of range"):
        LeakThresholds(plateau_share=0)
    with pytest.raises(ConfigError, match="growth_bytes=inf"):
        LeakThresholds(growth_bytes=math.inf)  # type: ignore[arg-type]


def test_the_verdict_object_has_one_held_figure() -> None:
    verdict = _verdict("plateau")
    assert not hasattr(verdict, "retained_total")
    assert verdict.held_bytes == 10 * MIB


def test_live_leak_event_once_per_path(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    # the live event is added to the phase span before it is built: the deferred path
    t: Telemetry = telemetry_factory(leak_thresholds=LeakThresholds(slope_bytes_per_run=1 * MIB),
                                     batched=True)
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
