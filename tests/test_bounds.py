"""Every bound holds and counts what it refuses: the finished-phase buffer, the step buffer,
the leak watcher's paths, and the rank variables' validation."""

from __future__ import annotations

from typing import Any

import pytest

from conftest import Telemetry
from memspan import MemspanConfig, names
from memspan.config import ConfigError
from memspan.drops import LEAK_WATCH_PATHS, PHASE_BUFFER_FULL, STEP_BUFFER_FULL
from memspan.phases.step_sampling import OVERFLOW
from memspan.resource import MemspanResourceDetector, rank_identity, rank_identity_or_default

# -- the finished-phase buffer (PhaseExporter.max_pending) -------------------------------------


def _stall_and_fill(tracker: Any, *, room: int, phases: int) -> Any:
    """Stop the export worker, leave ``room`` in its buffer and end ``phases`` phases."""
    exporter = tracker.exporter
    exporter._stop.set()  # a stalled worker: the buffer fills as the caller's thread appends
    exporter._wake.set()
    assert exporter._thread is not None
    exporter._thread.join(5)
    exporter.max_pending = room
    for index in range(phases):
        with tracker.phase(f"p{index}"):
            pass
    return exporter


def test_a_full_phase_buffer_drops_new_phases_and_counts_them(
        telemetry_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    telemetry = telemetry_factory(batched=True)  # spans wait in the buffer: the deferred path
    tracker = telemetry.tracker
    exporter = _stall_and_fill(tracker, room=3, phases=5)
    assert tracker.ledger.count(PHASE_BUFFER_FULL) == 2
    assert "3 finished phases were waiting for export" in caplog.text
    assert exporter.drain() == 3
    assert sorted(s.name for s in telemetry.finished()) == ["p0", "p1", "p2"]
    with tracker.phase("after"):  # room again once drained
        pass
    assert [s.name for s in telemetry.finished()][-1] == "after"


def test_a_full_phase_buffer_never_costs_a_synchronous_processor_its_span(
        telemetry: Telemetry) -> None:
    tracker = telemetry.tracker
    _stall_and_fill(tracker, room=3, phases=5)  # only histograms and listeners wait for it
    assert tracker.ledger.count(PHASE_BUFFER_FULL) == 2  # their histogram records are lost
    assert [s.name for s in telemetry.finished()] == [f"p{i}" for i in range(5)]


# -- the step buffer (PhaseExporter.max_step_phases) -------------------------------------------


def _run_step(telemetry: Telemetry, children: int) -> None:
    tracker = telemetry.tracker
    with tracker.phase("step", trace_root=True):
        for index in range(children):
            with tracker.phase(f"child{index}"):
                pass
            tracker.exporter.drain()  # route the child while its step is still open


def test_a_full_step_buffer_decides_the_oldest_step_as_kept_never_lost(
        telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    sampled = MemspanConfig(step_keep_every=10)  # steps wait for their decision
    bounded = telemetry_factory(config=sampled, batched=True)
    bounded.tracker.exporter.max_step_phases = 3
    _run_step(bounded, children=5)
    spans = {s.name: s for s in bounded.finished()}
    assert set(spans) == {"step", *(f"child{i}" for i in range(5))}  # nothing lost
    assert bounded.tracker.ledger.count(STEP_BUFFER_FULL) == 1
    assert (spans["step"].attributes or {})[names.STEP_KEEP_REASON] == OVERFLOW
    # the same step under the default bound waits whole for its decision
    unbounded = telemetry_factory(config=sampled, batched=True)
    _run_step(unbounded, children=5)
    root = next(s for s in unbounded.finished() if s.name == "step")
    assert unbounded.tracker.ledger.count(STEP_BUFFER_FULL) == 0
    assert (root.attributes or {})[names.STEP_KEEP_REASON] != OVERFLOW


# -- the leak watcher's paths (LeakWatcher.max_paths) ------------------------------------------


def test_the_leak_watcher_tracks_at_most_max_paths_and_counts_the_rest(
        telemetry: Telemetry) -> None:
    tracker = telemetry.tracker
    tracker.leak_watch.max_paths = 2
    for name in ("a", "b", "c", "a", "d", "c"):
        with tracker.phase(name):
            pass
    tracker.flush()
    assert set(tracker.leak_watch.series) == {"a", "b"}
    assert tracker.leak_watch.series["a"].n == 2  # known paths keep counting
    assert tracker.ledger.count(LEAK_WATCH_PATHS) == 3  # c, d, c


# -- rank validation (resource.py) -------------------------------------------------------------


@pytest.mark.parametrize(("rank", "local", "size"), [
    ("RANK", "LOCAL_RANK", "WORLD_SIZE"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_SIZE"),
    ("SLURM_PROCID", "SLURM_LOCALID", "SLURM_NTASKS"),
])
def test_rank_must_be_below_world_size(rank: str, local: str, size: str) -> None:
    assert rank_identity({rank: "3", local: "1", size: "4"}) == {
        names.RANK: 3, names.LOCAL_RANK: 1, names.WORLD_SIZE: 4}
    with pytest.raises(ConfigError, match=rf"^{rank}=4 must be smaller than {size}=4$"):
        rank_identity({rank: "4", size: "4"})
    with pytest.raises(ConfigError, match=rf"{rank}=-1 is out of range"):
        rank_identity({rank: "-1"})
    with pytest.raises(ConfigError, match=rf"{rank}"):
        rank_identity({rank: "first"})


def test_the_first_launcher_with_a_rank_wins_and_absence_is_no_rank() -> None:
    assert rank_identity({}) == {}
    assert rank_identity({"SLURM_PROCID": "5", "RANK": "1"}) == {names.RANK: 1}
    # an invalid SLURM size is not read when torchrun's variables answer first
    assert rank_identity({"RANK": "0", "SLURM_PROCID": "9", "SLURM_NTASKS": "2"}) == {
        names.RANK: 0}


def test_a_bad_rank_fails_the_detector_but_not_a_tracker(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "7")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="RANK=7 must be smaller than WORLD_SIZE=2"):
        MemspanResourceDetector().detect()
    assert rank_identity_or_default(3) == {names.RANK: 3}
