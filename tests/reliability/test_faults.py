"""Faults around the dump directory, signals, breadcrumbs and a program failing in a loop."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import Telemetry
from memspan import MemspanConfig, names
from memspan.launcher import classify_process_exit
from memspan.launcher.breadcrumb_bundles import collect_breadcrumbs
from memspan.oom import bundle as bundle_module
from memspan.oom.retention import list_bundles


def oom_events(t: Telemetry, name: str) -> list[dict[str, object]]:
    return [dict(e.attributes or {}) for s in t.finished() if s.name == name for e in s.events
            if e.name == names.OOM_EVENT]


def test_dump_dir_deleted_mid_run_is_recreated(telemetry_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dumps = tmp_path / "dumps"
    t = telemetry_factory(config=MemspanConfig(dump_dir=str(dumps)))
    for attempt in range(2):
        with pytest.raises(MemoryError), t.tracker.phase(f"load{attempt}"):
            raise MemoryError
        shutil.rmtree(dumps)  # someone cleans up while the job runs
    with pytest.raises(MemoryError), t.tracker.phase("again"):
        raise MemoryError
    (event,) = oom_events(t, "again")
    assert Path(str(event[names.OOM_DUMP_PATH])).is_dir()


def test_full_disk_and_unwritable_dir_are_reported(telemetry_factory, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    t = telemetry_factory(config=MemspanConfig(dump_dir=str(tmp_path / "dumps")))

    def full(directory: str, name: str, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bundle_module, "_write_file", full)
    error = MemoryError()
    with pytest.raises(MemoryError) as raised, t.tracker.phase("full"):
        raise error
    assert raised.value is error
    (event,) = oom_events(t, "full")
    assert "No space left on device" in str(event["memspan.oom.dump.error"])
    assert [p for p in (tmp_path / "dumps").iterdir()] == []


def test_memory_error_in_a_tight_loop_is_never_masked(telemetry_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    t = telemetry_factory(config=MemspanConfig(dump_dir=str(tmp_path), max_dumps=5))
    started = time.monotonic()
    for _ in range(300):
        error = MemoryError("again")
        with pytest.raises(MemoryError) as raised, t.tracker.phase("hot"):
            raise error
        assert raised.value is error
    assert time.monotonic() - started < 30
    assert len(list_bundles(str(tmp_path))) == 5
    assert t.tracker.ledger.count("dump_rate_limited") == 290
    events = oom_events(t, "hot")
    assert len(events) == 300
    assert sum("rate limited" in str(e.get("memspan.oom.dump.error", "")) for e in events) == 290


def test_corrupt_breadcrumbs_still_become_bundles(tmp_path: Path) -> None:
    crumbs = tmp_path / ".breadcrumbs"
    crumbs.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    (crumbs / f"r0_p{dead_pid}.jsonl").write_text(
        '{"type":"breadcrumb_header","pid":1,"rank":0}\n'
        '{"seq":1,"type":"phase_start","path":"train","scope_id":"s:1"}\n'
        'garbage that is not json\n'
        '{"seq":2,"type":"phase_start","path":"train / step","scope_id":"s:2"}\n'
        '{"seq":3,"type":"phase_en')  # cut by the SIGKILL
    (crumbs / "r1_p999999999.jsonl").write_bytes(b"\x00\xff\xfe binary junk")
    (crumbs / f"r0_p{os.getpid()}.jsonl").write_text("{}")  # a live process: left alone
    (crumbs / "notes.txt").write_text("not a breadcrumb")
    classification = classify_process_exit(-9)
    # no run start known (every breadcrumb counts as recent), the exit status the only evidence
    written = collect_breadcrumbs(str(tmp_path), classification, run_started=0.0, child_pid=-1,
                                  cgroup_oom_rose=False, max_dumps=10, max_total_mb=10).bundles
    assert len(written) == 2
    manifests = {json.loads(Path(p, "manifest.json").read_text())["pid"]: p for p in written}
    good = json.loads(Path(manifests[dead_pid], "metadata.json").read_text())
    assert good["corrupt_lines"] == 2
    assert json.loads(Path(manifests[dead_pid], "manifest.json").read_text())["phase_path"] == "train / step"
    assert sorted(p.name for p in crumbs.iterdir()) == sorted([f"r0_p{os.getpid()}.jsonl", "notes.txt"])


def test_sigterm_during_a_dump_leaves_no_partial_bundle(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import sys, time
        from memspan import OOMFlightRecorder, OOMFlightRecorderConfig
        from memspan.oom import bundle

        real = bundle._write_file
        def slow(directory, name, data):
            print("writing", name, flush=True)
            time.sleep(30)
            real(directory, name, data)
        bundle._write_file = slow
        recorder = OOMFlightRecorder(OOMFlightRecorderConfig(enabled=True,
                                                             dump_dir={str(tmp_path)!r}))
        for i in range(1000):
            recorder.record_event({{"type": "user", "i": i}})
        recorder.dump(reason="x", exception=MemoryError(), context=None, backend="cpu")
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    assert process.stdout.readline().startswith("writing")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == -signal.SIGTERM
    assert list_bundles(str(tmp_path)) == []  # nothing that looks like a bundle
    assert all(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
