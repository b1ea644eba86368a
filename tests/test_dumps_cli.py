"""memspan dumps list/show: readable summaries, and corrupt bundles reported, not crashed on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from fakes import FakeCudaApi
from memspan import MemspanConfig
from memspan.sources import HostMemorySource, TorchAllocatorSource
from memspan.tracker import Tracker


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memspan", "dumps", *args], capture_output=True,
                          text=True, timeout=60, check=False)


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
    assert "requested 2.0 GiB vs free 1.0 GiB on cuda:0" in text
    assert "phase stack:" in text and "    train" in text and "      forward" in text
    assert "last " in text and "phase_start" in text
    assert "allocator cuda:0: allocated 3.0 GiB" in text


def test_snapshot_command_is_offered(tmp_path: Path) -> None:
    (bundle, _) = make_bundles(tmp_path)
    (bundle / "cuda_snapshot.pickle").write_bytes(b"\x80\x04N.")
    text = cli("show", str(bundle)).stdout
    assert "pytorch.org/memory_viz" in text and "torch.cuda._memory_viz trace_plot" in text


def test_corrupt_and_partial_bundles_are_reported(tmp_path: Path) -> None:
    first, second = make_bundles(tmp_path)
    (first / "manifest.json").write_text("{ not json")
    (second / "phases.json").unlink()
    listing = cli("list", str(tmp_path))
    assert listing.returncode == 0 and "CORRUPT" in listing.stdout
    assert "Traceback" not in listing.stderr
    corrupt = cli("show", str(first))
    assert corrupt.returncode == 0 and "CORRUPT OR PARTIAL" in corrupt.stdout
    partial = cli("show", str(second))
    assert "PARTIAL: files listed but missing: phases.json" in partial.stdout
    assert "Traceback" not in corrupt.stderr + partial.stderr


def test_show_rejects_a_non_bundle(tmp_path: Path) -> None:
    result = cli("show", str(tmp_path / "missing"))
    assert result.returncode == 2 and "is not a bundle directory" in result.stderr


def test_list_of_an_empty_directory(tmp_path: Path) -> None:
    result = cli("list", str(tmp_path))
    assert result.returncode == 0 and "no bundles in" in result.stdout
