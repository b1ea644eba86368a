"""memspan.safe_files: exclusive writes, bounded regular-file reads, checked directories."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from memspan.safe_files import (
    UnsafePathError,
    check_directory,
    ensure_directory,
    read_regular_file,
    replace_file,
)


def test_ensure_directory_creates_every_level_0700(tmp_path: Path) -> None:
    target = tmp_path / "a/b/c"
    ensure_directory(str(target), own_name=False)
    for path in (tmp_path / "a", tmp_path / "a/b", target):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_a_file_in_place_of_a_directory_is_named(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UnsafePathError, match="not a directory"):
        ensure_directory(str(tmp_path / "f"), own_name=False)


def test_a_users_own_symlink_is_accepted_for_a_configured_directory(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    check_directory(str(tmp_path / "link"), own_name=False)
    with pytest.raises(UnsafePathError, match="symlink"):
        check_directory(str(tmp_path / "link"), own_name=True)


def test_replace_file_replaces_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "out.json").symlink_to(victim)
    replace_file(str(tmp_path / "out.json"), b"{}")
    assert victim.read_text() == "keep"
    assert (tmp_path / "out.json").read_text() == "{}"
    assert not (tmp_path / "out.json").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json", "victim"]


def test_reads_refuse_symlinks_fifos_and_devices_without_blocking(tmp_path: Path) -> None:
    (tmp_path / "zero").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo")
    for name in ("zero", "fifo"):
        with pytest.raises(UnsafePathError):
            read_regular_file(str(tmp_path / name), 1024)
    with pytest.raises(UnsafePathError, match="not a regular file"):
        read_regular_file("/dev/zero", 1024)


def test_reads_are_bounded_head_or_tail(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"a" * 100 + b"b" * 100)
    head = read_regular_file(str(tmp_path / "big"), 50)
    tail = read_regular_file(str(tmp_path / "big"), 50, tail=True)
    assert (head.data, head.size, head.truncated) == (b"a" * 50, 200, True)
    assert tail.data == b"b" * 50
