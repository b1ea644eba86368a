"""Breadcrumb writing in a directory others can write into (issue 12 #1, #6; issue 13).

Real files, real symlinks; root in the test container stands in for "another user" by
chowning to uid 65534.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from memspan.drops import BREADCRUMB_ERROR, DropLedger
from memspan.oom.breadcrumbs import BreadcrumbWriter, breadcrumb_path, read_breadcrumb
from memspan.oom.ring import EventRing

VICTIM_TEXT = "precious data\n"


def writer(dump_dir: Path, ledger: DropLedger, ring: EventRing | None = None,
           min_interval_s: float = 60.0) -> tuple[BreadcrumbWriter, EventRing]:
    ring = ring or EventRing(100)
    path = breadcrumb_path(str(dump_dir), 0, os.getpid())
    return BreadcrumbWriter(path, ring, {"pid": os.getpid()}, ledger=ledger,
                            min_interval_s=min_interval_s), ring


def phase_start(ring: EventRing, path: str, scope: str) -> None:
    ring.record({"type": "phase_start", "path": path, "scope_id": scope})


def test_dump_dir_and_breadcrumbs_dir_are_created_0700(tmp_path: Path) -> None:
    dump = tmp_path / "a" / "b" / "dumps"
    w, ring = writer(dump, DropLedger())
    phase_start(ring, "train", "s:1")
    w.flush()
    for directory in (dump.parent, dump, dump / ".breadcrumbs"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    assert stat.S_IMODE(Path(w.path).stat().st_mode) == 0o600


def test_a_symlinked_breadcrumbs_dir_is_refused_and_counted(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "dumps").mkdir()
    (tmp_path / "dumps/.breadcrumbs").symlink_to(elsewhere)
    ledger = DropLedger()
    w, ring = writer(tmp_path / "dumps", ledger)
    phase_start(ring, "train", "s:1")
    w.flush()
    w.flush(force=True)
    assert list(elsewhere.iterdir()) == []
    assert ledger.count(BREADCRUMB_ERROR) == 1  # refused once, then off


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a directory of another user")
def test_a_breadcrumbs_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    crumbs = tmp_path / "dumps/.breadcrumbs"
    crumbs.mkdir(parents=True)
    os.chown(crumbs, 65534, 65534)
    ledger = DropLedger()
    w, ring = writer(tmp_path / "dumps", ledger)
    phase_start(ring, "train", "s:1")
    w.flush()
    assert list(crumbs.iterdir()) == []
    assert ledger.count(BREADCRUMB_ERROR) == 1


def test_planted_symlinks_are_replaced_never_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    crumbs = tmp_path / "dumps/.breadcrumbs"
    crumbs.mkdir(parents=True, mode=0o700)
    final = Path(breadcrumb_path(str(tmp_path / "dumps"), 0, os.getpid()))
    (crumbs / (final.name + ".tmp")).symlink_to(victim)  # the old fixed temporary name
    ledger = DropLedger()
    w, ring = writer(tmp_path / "dumps", ledger, ring=EventRing(100, max_bytes=1 << 20))
    w.max_bytes = 600  # force rewrites through the temporary
    for index in range(20):
        phase_start(ring, "step", f"s:{index}")
        w.flush()
        if index == 5:  # a symlink planted at the final name after the first write
            final.unlink()
            final.symlink_to(victim)
    assert victim.read_text() == VICTIM_TEXT
    assert final.is_file() and not final.is_symlink()
    header, events, bad = read_breadcrumb(str(final))
    assert header is not None and events and bad == 0


def test_every_phase_start_is_written_at_once(tmp_path: Path) -> None:
    """Throttling (60 s here) never delays a phase start (issue 13); a phase end or a sample
    waits for the interval or the next start."""
    w, ring = writer(tmp_path / "dumps", DropLedger(), min_interval_s=60.0)
    phase_start(ring, "train", "s:1")
    w.flush()
    phase_start(ring, "train / step", "s:2")
    w.flush()
    ring.record({"type": "sample", "values": {"rss": 1}})
    ring.record({"type": "phase_end", "path": "train / step", "scope_id": "s:2"})
    w.flush()
    _, events, _ = read_breadcrumb(w.path)
    assert [e["type"] for e in events] == ["phase_start", "phase_start"]
    phase_start(ring, "train / step", "s:3")
    w.flush()
    _, events, _ = read_breadcrumb(w.path)
    assert [e["type"] for e in events] == ["phase_start", "phase_start", "sample", "phase_end",
                                           "phase_start"]
    ring.record({"type": "phase_end", "path": "train / step", "scope_id": "s:3"})
    w.min_interval_s = 0.0
    w.flush()
    _, events, _ = read_breadcrumb(w.path)
    assert events[-1]["type"] == "phase_end"


def test_breadcrumbs_recover_after_the_dump_dir_is_deleted(tmp_path: Path) -> None:
    dump = tmp_path / "dumps"
    ledger = DropLedger()
    w, ring = writer(dump, ledger)
    phase_start(ring, "train", "s:1")
    w.flush()
    shutil.rmtree(dump)
    phase_start(ring, "train / step", "s:2")
    w.flush()
    assert stat.S_IMODE(dump.stat().st_mode) == 0o700
    assert stat.S_IMODE((dump / ".breadcrumbs").stat().st_mode) == 0o700
    header, events, _ = read_breadcrumb(w.path)
    assert header is not None
    assert [e["path"] for e in events] == ["train", "train / step"]
    phase_start(ring, "train / step / inner", "s:3")
    w.flush()  # and appends again afterwards
    _, events, _ = read_breadcrumb(w.path)
    assert events[-1]["path"] == "train / step / inner"
    assert ledger.count(BREADCRUMB_ERROR) == 0


def test_remove_never_follows_a_symlinked_directory(tmp_path: Path) -> None:
    w, ring = writer(tmp_path / "dumps", DropLedger())
    phase_start(ring, "train", "s:1")
    w.flush()
    crumbs = tmp_path / "dumps/.breadcrumbs"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    keep = elsewhere / Path(w.path).name
    keep.write_text("not memspan's\n")
    real = tmp_path / "moved"
    crumbs.rename(real)
    crumbs.symlink_to(elsewhere)
    w.remove()  # through the descriptor held on the real directory
    assert keep.read_text() == "not memspan's\n"
    assert not (real / Path(w.path).name).exists()
