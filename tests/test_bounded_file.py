"""The embedded output files stay bounded: rotation, oversized records, counted drops."""

from __future__ import annotations

import os
from pathlib import Path

from memspan.drops import OUTPUT_OVERSIZED, OUTPUT_ROTATED, DropLedger
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
