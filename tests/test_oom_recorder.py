"""The flight recorder: ring bounds, Stormlog API, bundle layout, retention, failures."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from memspan import OOMFlightRecorder, OOMFlightRecorderConfig
from memspan.drops import DropLedger
from memspan.oom import bundle as bundle_module
from memspan.oom.bundle import BUNDLE_NAME
from memspan.oom.retention import list_bundles, prune
from memspan.oom.ring import EventRing, estimate_size


def test_ring_is_bounded_by_count_and_counts_drops() -> None:
    ledger = DropLedger()
    ring = EventRing(100, ledger=ledger)
    for i in range(500):
        ring.record({"type": "phase_start", "i": i})
    events = ring.snapshot()
    assert len(events) == 100  # buffer_size events in total: rare events may use all of it
    assert [e["i"] for e in events] == list(range(400, 500))
    assert ledger.count("ring_overflow") == 400
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)


def test_samples_never_evict_the_rare_events() -> None:
    ring = EventRing(40)
    ring.record({"type": "phase_start", "path": "train"})
    ring.record({"type": "phase_start", "path": "train / step"})
    for i in range(10_000):
        ring.record({"type": "sample", "rss": i})
    types = [e["type"] for e in ring.snapshot()]
    assert types.count("phase_start") == 2
    assert types.count("sample") == 10


def test_ring_is_bounded_by_bytes_and_truncates_oversized_events() -> None:
    ledger = DropLedger()
    ring = EventRing(10_000, max_bytes=40_000, max_bytes_per_event=4_000, ledger=ledger)
    ring.record({"type": "user", "blob": "x" * 100_000})
    (event,) = ring.snapshot()
    assert event["_truncated"] is True and len(event["blob"]) < 2000
    assert ledger.count("event_truncated") == 1
    for _ in range(100):
        ring.record({"type": "user", "blob": "y" * 1000})
    assert sum(len(e.get("blob", "")) for e in ring.snapshot()) <= 40_000


def test_stormlog_api_record_snapshot_clear(tmp_path: Path) -> None:
    recorder = OOMFlightRecorder(OOMFlightRecorderConfig(enabled=True, dump_dir=str(tmp_path)))
    recorder.record_event({"type": "user", "note": "hello"})
    assert recorder.snapshot_events()[0]["note"] == "hello"
    recorder.clear()
    assert recorder.snapshot_events() == []


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match=r"OOMFlightRecorderConfig\.buffer_size must be an integer >= 1"):
        OOMFlightRecorderConfig(buffer_size=0)
    with pytest.raises(ValueError, match=r"OOMFlightRecorderConfig\.dump_dir must be a non-empty"):
        OOMFlightRecorderConfig(dump_dir="")


def test_disabled_recorder_writes_nothing(tmp_path: Path) -> None:
    recorder = OOMFlightRecorder(OOMFlightRecorderConfig(dump_dir=str(tmp_path / "d")))
    assert recorder.dump(reason="x", exception=MemoryError(), context=None, backend="cpu") is None
    assert not (tmp_path / "d").exists()


def test_dump_writes_a_complete_private_bundle(tmp_path: Path) -> None:
    recorder = OOMFlightRecorder(OOMFlightRecorderConfig(enabled=True, dump_dir=str(tmp_path)))
    for i in range(10_000):
        recorder.record_event({"type": "phase_start", "path": "train / step", "i": i})
    try:
        raise MemoryError("no room")
    except MemoryError as error:
        path = recorder.dump(reason="MemoryError", exception=error, context="step",
                             backend="cpu", metadata={"batch": 64})
    assert path is not None and os.path.isabs(path)
    assert BUNDLE_NAME.match(os.path.basename(path))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    files = sorted(os.listdir(path))
    assert files == ["environment.json", "events.jsonl", "manifest.json", "memory.json",
                     "metadata.json", "phases.json", "traceback.txt"]
    for name in files:
        assert stat.S_IMODE(os.stat(os.path.join(path, name)).st_mode) == 0o600
    manifest = json.loads(Path(path, "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert manifest["kind"] == "host_oom" and manifest["reason"] == "MemoryError"
    assert manifest["event_count"] == len(Path(path, "events.jsonl").read_text().splitlines())
    assert manifest["files"] == ["manifest.json", "events.jsonl", "metadata.json", "phases.json",
                                 "memory.json", "environment.json", "traceback.txt"]
    metadata = json.loads(Path(path, "metadata.json").read_text())
    assert metadata["exception"]["type"] == "MemoryError"
    assert metadata["user_metadata"] == {"batch": 64}
    assert "MemoryError: no room" in Path(path, "traceback.txt").read_text()


def test_environment_is_an_allowlist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "hunter2")
    monkeypatch.setenv("WANDB_API_KEY", "hunter3")
    recorder = OOMFlightRecorder(OOMFlightRecorderConfig(enabled=True, dump_dir=str(tmp_path)))
    path = recorder.dump(reason="x", exception=MemoryError(), context=None, backend="cpu")
    assert path is not None
    text = Path(path, "environment.json").read_text()
    assert json.loads(text)["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "hunter2" not in text and "hunter3" not in text
    assert "hunter" not in "".join(p.read_text() for p in Path(path).iterdir())


def test_new_bundle_survives_a_budget_smaller_than_itself(tmp_path: Path) -> None:
    recorder = OOMFlightRecorder(OOMFlightRecorderConfig(
        enabled=True, dump_dir=str(tmp_path), max_dumps=5, max_total_mb=1))
    for i in range(3000):
        recorder.record_event({"type": "user", "blob": "z" * 600, "i": i})
    first = recorder.dump(reason="a", exception=MemoryError(), context=None, backend="cpu")
    second = recorder.dump(reason="b", exception=MemoryError(), context=None, backend="cpu")
    assert first is not None and second is not None
    assert [b.name for b in list_bundles(str(tmp_path))] == [os.path.basename(second)]
    assert sum(f.stat().st_size for f in Path(second).iterdir()) > 1024 * 1024


def test_retention_keeps_max_dumps_and_ignores_foreign_names(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / ".tmp-20260101T000000Z_h_r0_p1_1-abcd").mkdir()
    recorder = OOMFlightRecorder(OOMFlightRecorderConfig(enabled=True, dump_dir=str(tmp_path),
                                                         max_dumps=2))
    paths = [recorder.dump(reason=str(i), exception=MemoryError(), context=None, backend="cpu")
             for i in range(4)]
    names = [b.name for b in list_bundles(str(tmp_path))]
    assert names == [os.path.basename(p) for p in paths[2:] if p]
    assert (tmp_path / "notes").exists()
    assert (tmp_path / ".tmp-20260101T000000Z_h_r0_p1_1-abcd").exists()


def test_prune_never_opens_bundles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        bundle = tmp_path / f"20260101T00000{i}Z_host_r0_p1_{i}"
        bundle.mkdir()
        (bundle / "manifest.json").write_text("{not json")
    opened = []
    real_open = open

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(args[0])
        return real_open(*args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    result = prune(str(tmp_path), max_dumps=2, max_total_bytes=1 << 30)
    assert len(result.removed) == 3 and opened == []


def test_unwritable_dump_dir_is_reported_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    recorder = OOMFlightRecorder(OOMFlightRecorderConfig(
        enabled=True, dump_dir=str(blocker / "dumps")))
    from memspan.oom.classify import classify_oom_exception
    from memspan.oom.recorder import DumpRequest

    error = MemoryError()
    result = recorder.write_dump(DumpRequest("MemoryError", error, None, "cpu",
                                             classify_oom_exception(error)))
    assert result.path is None and result.error is not None
    assert "NotADirectoryError" in result.error or "FileExistsError" in result.error
    assert recorder.dump(reason="x", exception=error, context=None, backend="cpu") is None
    assert recorder.ledger.count("dump_failed") == 2


def test_disk_full_leaves_no_partial_bundle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(directory: str, name: str, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bundle_module, "_write_file", full)
    recorder = OOMFlightRecorder(OOMFlightRecorderConfig(enabled=True, dump_dir=str(tmp_path)))
    assert recorder.dump(reason="x", exception=MemoryError(), context=None, backend="cpu") is None
    assert os.listdir(tmp_path) == []


def test_four_processes_dumping_and_pruning_one_directory(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys
        from memspan import OOMFlightRecorder, OOMFlightRecorderConfig
        recorder = OOMFlightRecorder(OOMFlightRecorderConfig(
            enabled=True, dump_dir={str(tmp_path)!r}, max_dumps=3, max_total_mb=64))
        recorder.max_dumps_per_minute = 1000
        for i in range(200):
            recorder.record_event({{"type": "user", "i": i}})
        for i in range(15):
            if recorder.dump(reason="r", exception=MemoryError(), context=None,
                             backend="cpu") is None:
                sys.exit("dump failed")
    """)
    processes = [subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE,
                                  text=True) for _ in range(4)]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        assert "Traceback" not in stderr
    bundles = list_bundles(str(tmp_path))
    assert 1 <= len(bundles) <= 3 + 3  # each process may keep its newest while others prune
    for entry in bundles:
        manifest = json.loads(Path(entry.path, "manifest.json").read_text())
        assert sorted(manifest["files"]) == sorted(os.listdir(entry.path))
    assert not [n for n in os.listdir(tmp_path) if n.startswith((".tmp-", ".trash-"))]


def test_read_only_location_is_reported_not_raised() -> None:
    # /proc refuses new directories even to root (chmod does not stop root)
    recorder = OOMFlightRecorder(OOMFlightRecorderConfig(enabled=True,
                                                         dump_dir="/proc/memspan-dumps"))
    assert recorder.dump(reason="x", exception=MemoryError(), context=None, backend="cpu") is None
    assert recorder.ledger.count("dump_failed") == 1


# -- buffer_size is the number of events kept ---------------------------------------------------
def test_a_full_ring_keeps_buffer_size_events() -> None:
    """Stormlog's meaning: a ring of 10,000 keeps 10,000 events, not a fixed 7,500 + 2,500."""
    recorder = OOMFlightRecorder(OOMFlightRecorderConfig(enabled=True, buffer_size=10_000))
    for i in range(25_000):
        recorder.record_event({"type": "phase_start", "i": i})
    events = recorder.snapshot_events()
    assert len(events) == 10_000
    assert events[0]["i"] == 15_000 and events[-1]["i"] == 24_999


def test_mixed_events_fill_the_ring_and_samples_keep_to_their_share() -> None:
    ledger = DropLedger()
    ring = EventRing(100, ledger=ledger)
    for i in range(1_000):
        ring.record({"type": "sample" if i % 2 else "phase_start", "i": i})
    events = ring.snapshot()
    assert len(events) == 100
    samples = [e for e in events if e["type"] == "sample"]
    assert len(samples) == 25  # a quarter at most
    assert events[-1]["i"] == 999 and events[-2]["i"] == 998  # the newest are always there
    rare = [e["i"] for e in events if e["type"] == "phase_start"]
    assert rare == list(range(850, 1000, 2))  # the newest 75 rare events, none skipped
    assert ledger.count("ring_overflow") == 900


def test_rare_events_are_never_evicted_by_samples_until_the_ring_is_full() -> None:
    ring = EventRing(10)
    for i in range(5):
        ring.record({"type": "phase_end", "i": i})
    for i in range(1_000):
        ring.record({"type": "sample", "i": i})
    events = ring.snapshot()
    assert [e["i"] for e in events if e["type"] == "phase_end"] == [0, 1, 2, 3, 4]
    assert len(events) == 5 + 2  # samples: a quarter of 10


def test_the_total_byte_budget_holds_for_mixed_events() -> None:
    ring = EventRing(100_000, max_bytes=50_000)
    for i in range(2_000):
        ring.record({"type": "sample" if i % 3 == 0 else "user", "blob": "z" * 200})
    events = [{k: v for k, v in e.items() if k not in ("seq", "ts")} for e in ring.snapshot()]
    sizes = [estimate_size(e) for e in events]
    assert sum(sizes) <= 50_000 and sum(sizes) > 50_000 - 2 * max(sizes)  # full, within bound
    assert sum(s for s, e in zip(sizes, events, strict=True) if e["type"] == "sample") <= 50_000 // 4


def test_size_names_say_what_they_bound(tmp_path: Path) -> None:
    """64 KiB per ring event vs 64 MiB per bundle file: two names, two meanings."""
    ring = EventRing(10, max_bytes_per_event=2_000)
    ring.record({"type": "user", "blob": "x" * 10_000})
    assert ring.snapshot()[0]["_truncated"] is True
    recorder = OOMFlightRecorder(OOMFlightRecorderConfig(enabled=True, dump_dir=str(tmp_path)))
    assert recorder.max_events_file_bytes == 64 << 20
    assert not hasattr(recorder, "max_event_bytes") and not hasattr(ring, "max_event_bytes")
    recorder.max_events_file_bytes = 1_000
    recorder.announce = False
    for i in range(100):
        recorder.record_event({"type": "user", "i": i})
    path = recorder.dump(reason="test", exception=MemoryError(), context=None, backend="cpu")
    assert path is not None
    assert os.path.getsize(os.path.join(path, "events.jsonl")) <= 1_000
    manifest = json.loads(Path(path, "manifest.json").read_text())
    assert manifest["events_truncated"] is True and 0 < manifest["event_count"] < 100


def test_a_written_bundle_is_announced_in_one_stderr_line(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        from memspan import OOMFlightRecorder, OOMFlightRecorderConfig
        recorder = OOMFlightRecorder(OOMFlightRecorderConfig(enabled=True, dump_dir="dumps"))
        print(recorder.dump(reason="r", exception=MemoryError(), context=None, backend="cpu"))
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    path = result.stdout.strip()
    (line,) = result.stderr.splitlines()
    assert line == f"memspan: OOM bundle written; look at it with: memspan dumps show {path}"
    shown = subprocess.run([sys.executable, "-m", "memspan", "dumps", "show", path],
                           capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0 and "kind host_oom" in shown.stdout
