"""Verdicts: cycle attribution, thresholds that scale, evidence, validated overrides."""

from __future__ import annotations

import math
import mmap
import random

import pytest

from conftest import Telemetry
from memspan import ConfigError, names
from memspan.analysis import LeakThresholds, RunSeries, judge_paths, verdict_for
from memspan.analysis.attribution import CycleAttribution, FinishedRun, judged_alone
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
    """One path's runs ``(start, end)`` with no parent phase, attributed and finished."""
    return judged_alone(pairs, None if peaks is None else list[int | None](peaks))


def chain(kept: list[int], base: int = 300 * MIB, work: int = 0) -> RunSeries:
    """Runs back to back: each keeps ``kept[i]`` and peaks ``work`` above its start."""
    pairs: list[tuple[int, int]] = []
    peaks: list[int | None] = []
    level = base
    for k in kept:
        pairs.append((level, level + k))
        peaks.append(max(work, k))
        level += k
    return judged_alone(pairs, peaks)


def test_per_step_leak_of_412_kib_for_300_steps_is_leaking() -> None:
    # The case: 130.6 MiB over 300 steps, R² 1.00, was called a plateau (slope < 1 MiB).
    rng = random.Random(7)
    kept = [412 * KIB + rng.randrange(-8, 9) * 4 * KIB for _ in range(300)]
    verdict = verdict_for(chain(kept, work=4 * MIB))
    assert verdict.verdict == "leaking" and verdict.badge == "LEAK SUSPECTED"
    assert verdict.slope_bytes_per_run == pytest.approx(412 * KIB, rel=0.02)
    assert verdict.r2 > 0.99 and verdict.runs == 300
    assert verdict.held_bytes == sum(kept)
    # judged after warm-up: the first tenth of the runs is left out of the growth
    assert verdict.evidence.startswith("Grew 108.3 MiB over 270 runs after warm-up")
    assert "R² 1.00" in verdict.evidence and "its runs retain 412.2 KiB/run" in verdict.evidence
    assert "a leak is growth of at least 4.0 MiB with R² ≥ 0.80" in verdict.evidence


def test_the_same_leak_over_few_runs_is_not_enough() -> None:
    # The threshold scales with the run count: 5 x 412 KiB = 2 MiB is under the 4 MiB floor.
    # Steady growth under the threshold is neither a plateau nor leak-free: more runs needed.
    verdict = verdict_for(chain([412 * KIB] * 5, work=4 * MIB))
    assert verdict.verdict == "insufficient data"
    assert verdict.evidence == ("Grows steadily (end level 412.0 KiB/run after warm-up, R² 1.00; "
                                "its runs retain 412.0 KiB/run) but only 1.6 MiB over 5 runs, "
                                "under the 4.0 MiB a leak needs: more runs are needed for a "
                                "verdict.")


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
    pairs: list[tuple[int, int]] = []
    level = 29 * MIB
    for k in kept:
        pairs.append((level, level + k))
        level += k
    s = judged_alone(pairs, [p if p > 0 else None for p in peaks])
    verdict = verdict_for(s)
    assert verdict.verdict == "leak-free" and verdict.badge == "CERTIFIED LEAK-FREE"
    assert "under the leak threshold" in verdict.evidence


def test_without_an_exact_peak_a_plateau_is_judged_against_the_process() -> None:
    # Measured (Scenario B): no run raised the high-water mark, so each peak equals the end
    # reading and tells nothing of the 5 MiB the run used: 2 MiB of a 32 MiB process stays.
    edges = [(30404, 32028), (32156, 32580), (32580, 32600), (32600, 32608), (32608, 32608),
             (32608, 32608), (32608, 32612), (32612, 32624)]
    s = judged_alone([(start * KIB, end * KIB) for start, end in edges])
    clean = verdict_for(s)
    assert clean.verdict == "leak-free"
    assert "its working memory not known exactly (no exact peak)" in clean.evidence
    # the forgotten cache, measured the same way: 5.4 MiB of 35 MiB
    cache = judged_alone([(29 * MIB, 34 * MIB + 400 * KIB)] + [(34 * MIB + 400 * KIB,) * 2] * 7)
    held = verdict_for(cache)
    assert held.verdict == "plateau" and held.critical


def test_flat_memory_is_leak_free_even_with_noise() -> None:
    noise = [0, 300_000, -200_000, 100_000, -50_000, 250_000, 0, -100_000]
    verdict = verdict_for(series([(100 * MIB, 100 * MIB + n) for n in noise]))
    assert verdict.verdict == "leak-free"
    # every run starts at the same level: what one run left, the next one started without
    assert verdict.held_bytes == 0


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


GIVE = 32 * KIB


def training_job(steps: int = 200, *, leak_forward: int = 0, leak_data: int = 0,
                 leak_step: int = 0, keep_gradients: bool = False, leftover: bool = True,
                 seed: int = 0,
                 base: int = 500 * MIB) -> dict[str, Verdict]:
    """The verdicts of a CNN-like training loop whose memory life-cycle is known exactly.

    Every step: ``data`` replaces the batch (8 MiB, the old one freed inside it) and, when
    ``leftover``, frees the 512 KiB that the last ``forward`` left (as measured on the corpus's
    CNN); ``forward`` builds 96 MiB of activations (and those 512 KiB again); ``backward`` frees them and makes 24 MiB of gradients;
    ``optimizer`` makes 48 MiB of state in its first run and frees the gradients
    (``zero_grad(set_to_none=True)``) unless ``keep_gradients``. Every level carries up to
    ``GIVE`` of reading noise; as in a real job, one reading is taken at each boundary and
    is both the end of one phase and the start of the next. Planted leaks stay where they are made: in ``forward``, in
    ``data``, or in the step's own code after ``optimizer`` (no child's)."""
    rng = random.Random(seed)
    attribution = CycleAttribution()
    level = base

    def noisy() -> int:
        nonlocal reading
        reading = level + rng.randrange(-GIVE, GIVE + 1)
        return reading

    reading = noisy()

    def run(path: str, grow: int, peak: int) -> None:
        nonlocal level
        start = reading
        level += grow
        attribution.add(FinishedRun(path, start, noisy(), max(0, peak + rng.randrange(GIVE))))

    train_start = reading
    gradients_alive = False
    for step in range(steps):
        step_start = reading
        left = 512 * KIB if leftover else 0
        run("train / step / data", leak_data - (left if step else 0), 8 * MIB + leak_data)
        run("train / step / forward", 96 * MIB + left + leak_forward, 96 * MIB + left + leak_forward)
        gradients = 0 if gradients_alive else 24 * MIB
        run("train / step / backward", gradients - 96 * MIB, gradients)
        state = 48 * MIB if step == 0 else 0
        freed = 0 if keep_gradients else 24 * MIB
        gradients_alive = keep_gradients
        run("train / step / optimizer", state - freed, state)
        level += leak_step
        attribution.add(FinishedRun("train / step", step_start, noisy(), None))
        if step % 50 == 49:
            run("train / evaluate", 0, 32 * MIB)
    attribution.add(FinishedRun("train", train_start, noisy(), None))
    attribution.finish()
    return judge_paths(attribution.series)


def leaking_paths(verdicts: dict[str, Verdict]) -> list[str]:
    return sorted(path for path, v in verdicts.items() if v.verdict == "leaking")


def test_a_clean_training_loop_is_leak_free_on_every_path() -> None:
    # the case the per-path sums of deltas got wrong: forward blamed for the activations
    # backward frees, backward and optimizer 'holding' negative memory
    for seed in range(5):
        verdicts = training_job(seed=seed)
        assert leaking_paths(verdicts) == [], seed
        assert not any(v.critical for v in verdicts.values()), seed
        for path in ("train / step / data", "train / step / forward", "train / step / backward"):
            assert verdicts[path].verdict == "leak-free", (seed, path, verdicts[path].evidence)
        # after warm-up no child retains anything beyond the noise
        for path in verdicts:
            if path.startswith("train / step"):
                assert abs(verdicts[path].retained_bytes_per_run) < GIVE, (seed, path)
        # the optimizer's state, made once in the first step, is held once by the children
        # (edge levels split it between the first forward and optimizer: the first step's
        # gradients sit at the lowest point) and once by the step: not a leak
        children = sum(v.held_bytes for path, v in verdicts.items()
                       if path.startswith("train / step / "))
        assert children == pytest.approx(48 * MIB, abs=4 * MIB), seed
        assert verdicts["train / step"].held_bytes == pytest.approx(48 * MIB, abs=4 * MIB)


def test_gradients_kept_between_steps_are_held_once_not_leaked() -> None:
    # zero_grad(set_to_none=False): the first backward's 24 MiB of gradients stay. Edge
    # levels cannot tell "forward made 96 MiB, backward freed 96 and made 24" from "backward
    # freed 72", so which child holds them is not pinned; that they are held once is.
    verdicts = training_job(keep_gradients=True)
    assert leaking_paths(verdicts) == []
    children = sum(v.held_bytes for path, v in verdicts.items()
                   if path.startswith("train / step / "))
    assert children == pytest.approx(24 * MIB + 48 * MIB, abs=6 * MIB)
    assert verdicts["train / step"].held_bytes == pytest.approx(72 * MIB, abs=6 * MIB)


@pytest.mark.parametrize(("planted", "culprit", "leftover"), [
    ({"leak_forward": 2 * MIB}, "train / step / forward", True),
    # data freeing forward's leftover while keeping more is, from edge levels alone, a data
    # run that keeps less and a forward that keeps the leftover: not this case's subject
    ({"leak_data": 768 * KIB}, "train / step / data", False),
    # the step's own 1 MiB a step must not hide the leftover's release from forward's baseline
    ({"leak_step": 1 * MIB}, "train / step", True),
])
def test_a_planted_leak_is_charged_to_the_phase_that_keeps_it(planted: dict[str, int],
                                                              culprit: str,
                                                              leftover: bool) -> None:
    (size,) = planted.values()
    verdicts = training_job(**planted, leftover=leftover)
    # the step always leaks with its child; no sibling is blamed
    expected = sorted({"train / step", culprit})
    assert leaking_paths(verdicts) == expected
    leak = verdicts[culprit]
    assert leak.retained_bytes_per_run == pytest.approx(size, rel=0.15)
    # the step also holds the optimizer's state, made once in its first run
    state = 48 * MIB if culprit == "train / step" else 0
    assert leak.held_bytes == pytest.approx(size * 200 + state, rel=0.15)
    for path, verdict in verdicts.items():
        assert 0 <= verdict.held_bytes <= (verdict.process_bytes or 0), path
        if path.startswith("train / step / ") and path != culprit:
            # no sibling retains beyond the reading noise (the corpus's leak_across_steps
            # once had forward a critical plateau of 114 MiB: half the step's own leak)
            assert abs(verdict.retained_bytes_per_run) < GIVE, path
            assert not verdict.critical, path


def test_held_is_never_negative_nor_more_than_the_process() -> None:
    # a path whose runs only release (a loader that frees a preloaded buffer) holds 0, and
    # a path that retains more than the process reads never reports more than the process
    release = series([(400 * MIB - i * MIB, 399 * MIB - i * MIB) for i in range(20)])
    assert release.held < 0
    assert verdict_for(release).held_bytes == 0
    assert "released" in verdict_for(release).evidence
    rising = series([(i * 10 * MIB, (i + 1) * 10 * MIB) for i in range(8)])
    verdict = verdict_for(rising)
    assert verdict.held_bytes <= (verdict.process_bytes or 0) == 80 * MIB


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
