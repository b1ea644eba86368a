"""The bundle reader's own rules: regular files only, bounded reads, tails, escapes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from memspan.cli.terminal_text import printable
from memspan.oom.bundle_reader import (
    MAX_EVENTS_TAIL_BYTES,
    Bundle,
    UnreadableFile,
    read_regular_file,
    tail_events,
)


def test_only_bounded_regular_files_are_read(tmp_path: Path) -> None:
    (tmp_path / "ok").write_bytes(b"12345")
    assert read_regular_file(str(tmp_path), "ok", 5) == b"12345"
    with pytest.raises(UnreadableFile, match="larger than 4 bytes"):
        read_regular_file(str(tmp_path), "ok", 4)
    (tmp_path / "link").symlink_to(tmp_path / "ok")
    with pytest.raises(UnreadableFile, match="symbolic link"):
        read_regular_file(str(tmp_path), "link", 100)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnreadableFile, match="not a regular file"):
        read_regular_file(str(tmp_path), "fifo", 100)
    (tmp_path / "dir").mkdir()
    with pytest.raises(UnreadableFile, match="not a regular file"):
        read_regular_file(str(tmp_path), "dir", 100)
    with pytest.raises(UnreadableFile, match="missing"):
        read_regular_file(str(tmp_path), "absent", 100)


def test_tail_events_reads_only_the_end_and_drops_the_cut_line(tmp_path: Path) -> None:
    line = json.dumps({"type": "sample", "pad": "x" * 1000}) + "\n"
    count = MAX_EVENTS_TAIL_BYTES // len(line) + 500  # more than the tail holds
    with open(tmp_path / "events.jsonl", "w") as handle:
        for i in range(count):
            handle.write(json.dumps({"type": "sample", "i": i, "pad": "x" * 1000}) + "\n")
    bundle = Bundle(path=str(tmp_path), manifest=None)
    everything = list(tail_events(bundle, 10_000))
    assert everything[-1]["i"] == count - 1
    assert len(everything) < count  # bounded by bytes, not by the file
    assert [e["i"] for e in everything] == list(range(count - len(everything), count))
    assert bundle.schema.skipped == 0  # the line cut by the tail's start is dropped, not skipped
    assert [e["i"] for e in tail_events(bundle, 3)] == [count - 3, count - 2, count - 1]
    assert list(tail_events(bundle, 0)) == []


def test_printable_escapes_every_control_character() -> None:
    assert printable("a\x1b[31mb\r\nc\x07\u202ed\x7f\x9b") == \
        "a\\x1b[31mb\\x0d\\x0ac\\x07\\u202ed\\x7f\\x9b"
    assert printable(None) == "unknown"
    assert printable("é ü 中文") == "é ü 中文"
    assert printable("x" * 50, 10) == "x" * 10 + "..."
