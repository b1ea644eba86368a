"""The embedded output files stay bounded and private, and hold whole lines only: rotation,
oversized records, a full disk, counted drops."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from memspan.drops import OUTPUT_OVERSIZED, OUTPUT_ROTATED, OUTPUT_WRITE_FAILED, DropLedger
from memspan.export.bounded_file import BoundedLineFile


def test_rotates_and_counts_dropped_records(tmp_path: Path) -> None:
    ledger = DropLedger()
    path = tmp_path / "traces.jsonl"
    stream = BoundedLineFile(str(path), max_bytes=1000, ledger=ledger)
    line = "x" * 99 + "\n"  # 100 bytes
    for _ in range(35):
        stream.write(line)
    stream.close()
    assert path.stat().st_size <= 1000
    assert (tmp_path / "traces.jsonl.1").stat().st_size <= 1000
    total_on_disk = path.stat().st_size + (tmp_path / "traces.jsonl.1").stat().st_size
    kept = total_on_disk // 100
    assert ledger.count(OUTPUT_ROTATED) == 35 - kept
    assert sorted(os.listdir(tmp_path)) == ["traces.jsonl", "traces.jsonl.1"]


def test_oversized_record_is_dropped_and_counted(tmp_path: Path) -> None:
    ledger = DropLedger()
    stream = BoundedLineFile(str(tmp_path / "m.jsonl"), max_bytes=50, ledger=ledger)
    stream.write("y" * 80 + "\n")
    stream.write("small\n")
    stream.close()
    assert (tmp_path / "m.jsonl").read_text() == "small\n"
    assert ledger.count(OUTPUT_OVERSIZED) == 1


def test_reopens_when_another_process_rotated_the_file(tmp_path: Path) -> None:
    ledger = DropLedger()
    path = tmp_path / "t.jsonl"
    stream = BoundedLineFile(str(path), max_bytes=10_000, ledger=ledger)
    stream.write("first\n")
    os.replace(path, tmp_path / "t.jsonl.1")  # as a sibling process would
    stream.write("second\n")
    stream.close()
    assert path.read_text() == "second\n"


def test_files_are_0600_in_a_0700_directory_memspan_creates(tmp_path: Path) -> None:
    directory = tmp_path / "out"
    stream = BoundedLineFile(str(directory / "traces.jsonl"), max_bytes=1000, ledger=DropLedger())
    stream.write("a\n")
    stream.close()
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "traces.jsonl").stat().st_mode) == 0o600


def test_rotated_and_older_files_are_0600(tmp_path: Path) -> None:
    old = tmp_path / "t.jsonl"
    old.write_text("left by an older version\n")
    old.chmod(0o644)
    stream = BoundedLineFile(str(old), max_bytes=60, ledger=DropLedger())
    for _ in range(5):
        stream.write("y" * 19 + "\n")
    stream.close()
    assert stat.S_IMODE(old.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "t.jsonl.1").stat().st_mode) == 0o600


def test_an_existing_directory_keeps_its_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    BoundedLineFile(str(tmp_path / "m.jsonl"), max_bytes=100, ledger=DropLedger()).close()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755


def test_a_planted_symlink_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "traces.jsonl").symlink_to(victim)
    with pytest.raises(OSError):
        BoundedLineFile(str(tmp_path / "traces.jsonl"), max_bytes=100, ledger=DropLedger())
    assert victim.read_text() == "precious\n"


def assert_whole_lines(data: bytes) -> list[bytes]:
    assert data == b"" or data.endswith(b"\n"), f"partial line at the end: {data[-40:]!r}"
    lines = data.split(b"\n")[:-1]
    for line in lines:
        assert line.startswith(b"{") and line.endswith(b"}"), f"cut or glued line: {line[:80]!r}"
    return lines


# A full disk, made real: the file size limit of a child process (root ignores chmod, not this).
FSIZE_CHILD = textwrap.dedent("""
    import json, resource, signal, sys
    from memspan.drops import DropLedger
    from memspan.export.bounded_file import BoundedLineFile
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))
    ledger = DropLedger()
    stream = BoundedLineFile(sys.argv[1], max_bytes=1 << 20, ledger=ledger)
    written = [stream.write_line(json.dumps({"i": i, "pad": "p" * 700}).encode() + b"\\n")
               for i in range(40)]
    print(json.dumps({"written": written, "drops": ledger.snapshot()}))
""")


def test_a_file_size_limit_drops_whole_records_and_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "traces.jsonl"
    result = subprocess.run([sys.executable, "-c", FSIZE_CHILD, str(path)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    lines = assert_whole_lines(path.read_bytes())
    assert 0 < len(lines) == sum(report["written"]) < 40
    assert report["drops"] == {OUTPUT_WRITE_FAILED: 40 - len(lines)}
    assert [json.loads(line)["i"] for line in lines] == list(range(len(lines)))


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (the RLIMIT_FSIZE test covers a full disk)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_never_leaves_a_partial_line(small_tmpfs: Path) -> None:
    ledger = DropLedger()
    path = small_tmpfs / "out" / "traces.jsonl"
    stream = BoundedLineFile(str(path), max_bytes=1 << 20, ledger=ledger)
    results = [stream.write_line(json.dumps({"i": i, "pad": "q" * 3000}).encode() + b"\n")
               for i in range(40)]
    stream.close()
    lines = assert_whole_lines(path.read_bytes())
    assert 0 < len(lines) == sum(results) < 40
    assert ledger.count(OUTPUT_WRITE_FAILED) == 40 - len(lines)
