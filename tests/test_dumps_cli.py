"""memspan dumps list/show: readable summaries, and hostile or corrupt bundles reported safely."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from fakes import FakeCudaApi
from memspan import MemspanConfig
from memspan.sources import HostMemorySource, TorchAllocatorSource
from memspan.tracker import Tracker


def cli(*args: str, limit_memory: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``memspan dumps`` for real; with ``limit_memory`` under a 1 GiB address space."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    return subprocess.run([sys.executable, "-m", "memspan", "dumps", *args], capture_output=True,
                          text=True, timeout=60, check=False,
                          preexec_fn=cap if limit_memory else None)


def make_bundles(dump_dir: Path) -> list[Path]:
    api = FakeCudaApi()
    api.allocate(3 << 30)
    tracker = Tracker(config=MemspanConfig(dump_dir=str(dump_dir)), start_sampler=False,
                      sources=[HostMemorySource(), TorchAllocatorSource(api)])
    try:
        for message in ("first", "second"):
            try:
                with tracker.phase("train"), tracker.phase("forward"):
                    raise torch.OutOfMemoryError(
                        f"CUDA out of memory ({message}). Tried to allocate 2.00 GiB. GPU 0 has a "
                        "total capacity of 79.15 GiB of which 1.00 GiB is free.")
            except torch.OutOfMemoryError:
                pass
    finally:
        tracker.shutdown()
    return sorted(p for p in dump_dir.iterdir() if not p.name.startswith("."))


def test_list_newest_first_and_show(tmp_path: Path) -> None:
    _first, second = make_bundles(tmp_path)
    listing = cli("list", str(tmp_path))
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert "kind" in lines[0] and "phase path" in lines[0]
    assert "device_oom" in lines[1] and "train / forward" in lines[1]
    assert len(lines) == 3
    shown = cli("show", str(second))
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "kind device_oom" in text and "reason torch.OutOfMemoryError" in text
    assert "requested 2.0 GiB, free 1.0 GiB of 79.1 GiB on cuda:0" in text
    assert "phase stack (outermost first):" in text and "    train" in text
    assert "      forward" in text
    assert "last " in text and "phase_end" in text  # the first OOM's phases, ended
    assert "allocator cuda:0: allocated 3.0 GiB" in text
    # readable: no Python None leaking through, ids short or "unknown"
    assert "None" not in text
    assert "trace unknown" in text  # no SDK span was recording
    assert "exception torch.OutOfMemoryError: CUDA out of memory" in text


def test_snapshot_command_is_offered(tmp_path: Path) -> None:
    (bundle, _) = make_bundles(tmp_path)
    (bundle / "cuda_snapshot.pickle").write_bytes(b"\x80\x04N.")
    text = cli("show", str(bundle)).stdout
    assert "pytorch.org/memory_viz" in text and "torch.cuda._memory_viz trace_plot" in text
    lines = text.splitlines()
    command = next(i for i, line in enumerate(lines) if "_memory_viz trace_plot" in line)
    assert "loading a pickle runs code" in lines[command + 1]
    assert "trust" in lines[command + 1]


def test_a_linked_snapshot_is_not_offered(tmp_path: Path) -> None:
    (bundle, _) = make_bundles(tmp_path)
    target = tmp_path / "elsewhere.pickle"
    target.write_bytes(b"\x80\x04N.")
    (bundle / "cuda_snapshot.pickle").symlink_to(target)
    assert "_memory_viz" not in cli("show", str(bundle)).stdout


def test_corrupt_and_partial_bundles_are_reported(tmp_path: Path) -> None:
    first, second = make_bundles(tmp_path)
    (first / "manifest.json").write_text("{ not json")
    (second / "phases.json").unlink()
    listing = cli("list", str(tmp_path))
    assert listing.returncode == 0 and "CORRUPT" in listing.stdout
    assert "Traceback" not in listing.stderr
    corrupt = cli("show", str(first))
    assert corrupt.returncode == 1 and "CORRUPT OR PARTIAL" in corrupt.stdout
    partial = cli("show", str(second))
    assert partial.returncode == 1
    assert "PARTIAL: files listed but missing: phases.json" in partial.stdout
    assert "Traceback" not in corrupt.stderr + partial.stderr


def test_show_rejects_a_non_bundle(tmp_path: Path) -> None:
    result = cli("show", str(tmp_path / "missing"))
    assert result.returncode == 2 and "is not a bundle directory" in result.stderr


def test_show_of_a_directory_that_is_not_a_bundle_fails_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    result = cli("show", str(tmp_path))
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert "is not an OOM bundle" in line and "manifest.json is missing" in line


def test_list_of_a_file_fails_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = cli("list", str(tmp_path / "file"))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "is not a directory" in result.stderr


# -- hostile bundles ---------------------------------------------------------------------------
NAME = "20260101T000000Z_host_r0_p1_1"


def hand_made_bundle(root: Path, **files: Any) -> Path:
    """A bundle directory written by hand: str/bytes as is, anything else as JSON."""
    bundle = root / NAME
    bundle.mkdir()
    defaults: dict[str, Any] = {
        "manifest.json": {"schema_version": 1, "bundle_name": NAME, "kind": "host_oom",
                          "reason": "MemoryError", "phase_path": "train", "rank": 0,
                          "files": ["manifest.json", "events.jsonl", "metadata.json",
                                    "phases.json"]},
        "events.jsonl": '{"type":"phase_start","path":"train","ts":1.0,"rss":1048576}\n',
        "metadata.json": {"exception": {"type": "MemoryError", "module": "builtins",
                                        "message": ""}},
        "phases.json": [{"name": "train"}],
    }
    defaults.update({key.replace("_json", ".json").replace("_jsonl", ".jsonl"): value
                     for key, value in files.items()})
    for name, content in defaults.items():
        if content is None:
            continue
        target = bundle / name
        if isinstance(content, bytes):
            target.write_bytes(content)
        elif isinstance(content, str):
            target.write_text(content)
        else:
            target.write_text(json.dumps(content))
    return bundle


@pytest.mark.parametrize("manifest", [
    {"schema_version": 1, "files": 5},
    {"schema_version": 1, "files": [1, None, "../../etc/passwd"]},
    {"schema_version": 1, "kind": {"a": 1}, "reason": ["x"], "rank": "1e999",
     "pid": 1e308 * 10, "phase_path": 7, "trace_id": 3, "session_id": []},
    {"schema_version": 1, "rank": -1, "pid": True},
])
def test_wrong_shapes_in_the_manifest_are_skipped_and_counted(tmp_path: Path,
                                                               manifest: dict[str, Any]) -> None:
    bundle = hand_made_bundle(tmp_path, manifest_json=manifest)
    for command in (("show", str(bundle)), ("list", str(tmp_path))):
        result = cli(*command)
        assert result.returncode in (0, 1), result.stderr
        assert "Traceback" not in result.stderr
    shown = cli("show", str(bundle)).stdout
    assert "did not fit the bundle schema and were skipped" in shown
    assert "../../etc/passwd" not in shown
    assert "did not fit the bundle schema" in cli("list", str(tmp_path)).stdout


@pytest.mark.parametrize(("name", "content"), [
    ("metadata_json", "\"a string where an object belongs\""),
    ("metadata_json", {"exception": "boom", "classification": [1],
                       "observer": {"requested_bytes": "1e999", "device_free_bytes": 1e999}}),
    ("metadata_json", {"classification": {"requested_bytes": -5,
                                          "reserved_unallocated_bytes": 10 ** 30}}),
    ("phases_json", {"files": [1]}),
    ("phases_json", [1, "two", {"name": 3, "attributes": "x"}]),
    ("phases_json", "[" + json.dumps({"name": "deep", "attributes": {"a": "PLACEHOLDER"}})
     .replace('"PLACEHOLDER"', "[" * 900 + "]" * 900) + "]"),
    ("memory_json", {"torch": {"devices": {"cuda:0": {"memory_stats": {"allocated_bytes": 5}}}},
                     "host": []}),
    ("memory_json", "[" * 100_000 + "]" * 100_000),
    ("events_jsonl", "[1]\n\"x\"\nnot json\n{\"type\": 5, \"ts\": \"abc\", \"rss\": \"1e999\"}\n"),
    ("events_jsonl", b"\xff\xfe\x00garbage\n"),
])
def test_wrong_shapes_in_other_files_never_give_a_traceback(tmp_path: Path, name: str,
                                                            content: Any) -> None:
    bundle = hand_made_bundle(tmp_path, **{name: content})
    result = cli("show", str(bundle))
    assert result.returncode in (0, 1)
    assert "Traceback" not in result.stderr and result.stderr == ""
    assert result.stdout.startswith("bundle ")


def test_events_linked_to_dev_zero_are_refused_in_bounded_memory(tmp_path: Path) -> None:
    bundle = hand_made_bundle(tmp_path, events_jsonl=None)
    (bundle / "events.jsonl").symlink_to("/dev/zero")
    result = cli("show", str(bundle), limit_memory=True)
    assert result.returncode == 1, result.stderr
    assert "events.jsonl: a symbolic link (not followed)" in result.stdout
    assert "Traceback" not in result.stderr


def test_a_huge_events_file_is_read_from_its_tail_only(tmp_path: Path) -> None:
    bundle = hand_made_bundle(tmp_path)
    with open(bundle / "events.jsonl", "r+b") as handle:  # 2 GiB, sparse: one 2 GiB line
        handle.truncate(2 << 30)
        handle.seek(0, os.SEEK_END)
        handle.write(b'\n{"type":"oom","path":"train","kind":"host_oom","ts":2.0}\n')
    result = cli("show", str(bundle), limit_memory=True)
    assert result.returncode == 0, result.stderr
    assert "oom " in result.stdout and "host_oom" in result.stdout


def test_a_fifo_manifest_does_not_hang_list_or_show(tmp_path: Path) -> None:
    bundle = hand_made_bundle(tmp_path, manifest_json=None)
    os.mkfifo(bundle / "manifest.json")
    listing = cli("list", str(tmp_path))  # a hang would hit the 60 s timeout
    assert listing.returncode == 0
    assert "CORRUPT" in listing.stdout and "not a regular file" in listing.stdout
    shown = cli("show", str(bundle))
    assert shown.returncode == 1 and "manifest.json is not a regular file" in shown.stdout


def test_escape_sequences_never_reach_the_terminal(tmp_path: Path) -> None:
    evil = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\r\nfake line\u202e"
    bundle = hand_made_bundle(
        tmp_path,
        manifest_json={"schema_version": 1, "kind": evil, "reason": evil, "phase_path": evil,
                       "trace_id": evil, "files": []},
        metadata_json={"exception": {"type": evil, "module": evil, "message": evil},
                       "user_metadata": {evil: evil}},
        phases_json=[{"name": evil, "attributes": {evil: evil}}],
        events_jsonl=json.dumps({"type": evil, "path": evil, "ts": 1, "error": evil}) + "\n",
    )
    for command in (("show", str(bundle)), ("list", str(tmp_path))):
        result = cli(*command)
        output = result.stdout + result.stderr
        assert "\x1b" not in output and "\x07" not in output and "\r" not in output
        assert "\u202e" not in output
        assert "\\x1b" in result.stdout  # shown, visibly escaped
    shown = cli("show", str(bundle)).stdout
    assert not any(line.startswith("fake line") for line in shown.splitlines())


def test_events_zero_shows_no_events(tmp_path: Path) -> None:
    bundle = hand_made_bundle(tmp_path)
    none = cli("show", str(bundle), "--events", "0").stdout
    assert "phase_start" not in none and "events before the OOM" not in none
    some = cli("show", str(bundle), "--events", "1").stdout
    assert "last 1 events before the OOM" in some and "phase_start" in some
    negative = cli("show", str(bundle), "--events", "-1")
    assert negative.returncode == 2 and "--events" in negative.stderr


def test_events_are_a_table_with_offsets_and_mib(tmp_path: Path) -> None:
    lines = [
        {"type": "phase_start", "path": "train / step", "ts": 100.0, "rss": 512 << 20,
         "allocated": 3 << 30},
        {"type": "sample", "ts": 100.5, "values": {"process.memory.usage": 600 << 20}},
        {"type": "oom", "path": "train / step", "ts": 101.25, "kind": "host_oom",
         "reason": "MemoryError"},
    ]
    bundle = hand_made_bundle(tmp_path, events_jsonl="".join(json.dumps(e) + "\n" for e in lines))
    text = cli("show", str(bundle)).stdout.splitlines()
    header = next(i for i, line in enumerate(text) if "offset" in line and "type" in line)
    rows = text[header + 1:header + 4]
    assert rows[0].split()[:4] == ["-1.250", "phase_start", "train", "/"]
    assert "rss 512.0" in rows[0] and "alloc 3072.0" in rows[0]
    assert rows[1].split()[:2] == ["-0.750", "sample"] and "rss 600.0" in rows[1]
    assert rows[2].split()[:2] == ["+0.000", "oom"] and "host_oom MemoryError" in rows[2]


def test_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    events = "".join(json.dumps({"type": "phase_start", "path": f"p{i}", "ts": i}) + "\n"
                     for i in range(5000))
    bundle = hand_made_bundle(tmp_path, events_jsonl=events)
    for command in (f"show {bundle} --events 5000", f"list {tmp_path}"):
        result = subprocess.run(
            f"{sys.executable} -m memspan dumps {command} | head -c 10 >/dev/null",
            shell=True, capture_output=True, text=True, timeout=60, check=False)
        assert "BrokenPipeError" not in result.stderr and "Traceback" not in result.stderr
        assert result.stderr == ""
    direct = subprocess.Popen([sys.executable, "-m", "memspan", "dumps", "show", str(bundle),
                               "--events", "5000"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    assert direct.stdout is not None and direct.stderr is not None
    direct.stdout.read(10)
    direct.stdout.close()
    assert direct.wait(timeout=60) == 0
    assert direct.stderr.read() == b""


def test_list_of_an_empty_directory(tmp_path: Path) -> None:
    result = cli("list", str(tmp_path))
    assert result.returncode == 0 and "no bundles in" in result.stdout
