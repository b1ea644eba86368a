"""OOM evidence: phase attributes in the bundle, the allocator's split on the span, and the
user's exception kept whatever it does (unprintable, in a group, in a thread)."""

from __future__ import annotations

import builtins
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import Telemetry
from fakes import FakeCudaApi
from launcher_helpers import run_python
from memspan import MemspanConfig, names
from memspan.oom.observer import AllocatorObserver
from memspan.oom.retention import list_bundles
from memspan.oom.service import capture_oom_block
from memspan.sources import HostMemorySource, TorchAllocatorSource

# Python 3.10 has no exception groups: those tests skip there
EXCEPTION_GROUP: Any = getattr(builtins, "ExceptionGroup", None)
BASE_EXCEPTION_GROUP: Any = getattr(builtins, "BaseExceptionGroup", None)
needs_groups = pytest.mark.skipif(EXCEPTION_GROUP is None, reason="no ExceptionGroup before 3.11")

MIB = 1 << 20
GIB = 1 << 30
FRAGMENTED = ("CUDA out of memory. Tried to allocate 224.00 MiB. GPU 0 has a total capacity of "
              "44.34 GiB of which 160.81 MiB is free. Of the allocated memory 43.36 GiB is "
              "allocated by PyTorch, and 396.27 MiB is reserved by PyTorch but unallocated. If "
              "reserved but unallocated memory is large try setting "
              "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.")


def run_script(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_python(script, cwd)


@pytest.fixture
def oom_telemetry(telemetry_factory, tmp_path: Path) -> Telemetry:  # type: ignore[no-untyped-def]
    return telemetry_factory(config=MemspanConfig(dump_dir=str(tmp_path / "dumps")))


def only_bundle(directory: Path) -> str:
    (bundle,) = list_bundles(str(directory))
    return bundle.path


# -- phase attributes ---------------------------------------------------------------------------
def test_open_phase_attributes_are_in_the_bundle_and_shown(tmp_path: Path) -> None:
    result = run_script(f"""
        import torch, memspan
        memspan.configure(dump_dir="dumps", export_interval_s=60)
        try:
            with memspan.phase("train", epoch=2, tags=("a", "b")):
                with memspan.phase("step", step=7, batch_size=64):
                    raise torch.OutOfMemoryError({FRAGMENTED!r})
        except torch.OutOfMemoryError:
            print("caught")
        memspan.shutdown()
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "caught" in result.stdout
    path = only_bundle(tmp_path / "dumps")
    phases = json.loads(Path(path, "phases.json").read_text())
    assert [p["name"] for p in phases] == ["train", "step"]
    assert phases[0]["attributes"] == {"epoch": 2, "tags": ["a", "b"]}
    assert phases[1]["attributes"] == {"step": 7, "batch_size": 64}
    # one line on stderr says where the bundle is and how to look at it
    announced = [line for line in result.stderr.splitlines() if "OOM bundle written" in line]
    assert announced == [f"memspan: OOM bundle written; look at it with: "
                         f"memspan dumps show {path}"]
    shown = subprocess.run([sys.executable, "-m", "memspan", "dumps", "show", path],
                           capture_output=True, text=True, timeout=60, check=False)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = shown.stdout.splitlines()
    assert "    train  epoch=2 tags=[a, b]" in lines
    assert "      step  step=7 batch_size=64" in lines
    assert "  PyTorch held 43.4 GiB allocated and 396.3 MiB reserved but unallocated" in lines
    assert any("likely fragmentation" in line and
               "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in line for line in lines)


# -- the allocator's split on the span and in the bundle ---------------------------------------
def test_fragmentation_is_on_the_span_and_survives_the_observer_refinement(
    telemetry_factory, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    callbacks: list[Any] = []
    observer = AllocatorObserver(attach=callbacks.append, snapshot=lambda: None)
    t = telemetry_factory(config=MemspanConfig(dump_dir=str(tmp_path / "dumps")),
                          sources=[HostMemorySource(), TorchAllocatorSource(FakeCudaApi())],
                          observer=observer)
    with pytest.raises(torch.OutOfMemoryError), t.tracker.phase("forward"):
        assert observer.attached
        callbacks[0](0, 234_881_024, 46_000_000_000, 168_620_000)  # exact figures first
        raise torch.OutOfMemoryError(FRAGMENTED)
    (event,) = [e for e in t.span("forward").events if e.name == names.OOM_EVENT]
    attributes = event.attributes or {}
    assert attributes[names.OOM_REQUESTED_BYTES] == 234_881_024  # the observer's integer
    assert attributes[names.OOM_DEVICE_FREE_BYTES] == 168_620_000
    assert attributes[names.OOM_ALLOCATED_BYTES] == int(43.36 * GIB)  # kept by the refinement
    assert attributes[names.OOM_RESERVED_UNALLOCATED_BYTES] == int(396.27 * MIB)
    assert "expandable_segments:True" in str(attributes[names.OOM_SUGGESTION])
    metadata = json.loads(Path(str(attributes[names.OOM_DUMP_PATH]), "metadata.json").read_text())
    classification = metadata["classification"]
    assert classification["fragmentation_likely"] is True
    assert classification["reserved_unallocated_bytes"] == int(396.27 * MIB)


# -- the user's exception, whatever it does ------------------------------------------------------
class UnprintableRuntimeError(RuntimeError):
    def __str__(self) -> str:
        raise ValueError("__str__ is broken")


class UnprintableMemoryError(MemoryError):
    def __str__(self) -> str:
        raise ValueError("__str__ is broken")


@pytest.mark.parametrize("error_type", [UnprintableRuntimeError, UnprintableMemoryError])
def test_an_unprintable_exception_propagates_unchanged_from_capture_oom(
    oom_telemetry: Telemetry, error_type: type[BaseException]
) -> None:
    error = error_type()
    with pytest.raises(error_type) as raised, \
            capture_oom_block(oom_telemetry.tracker.flight_recorder, "warmup", None):
        raise error
    assert raised.value is error
    assert raised.value.__context__ is None  # nothing of ours was raised while handling it


def test_an_unprintable_memory_error_is_still_dumped(oom_telemetry: Telemetry,
                                                      tmp_path: Path) -> None:
    with pytest.raises(UnprintableMemoryError), oom_telemetry.tracker.phase("load"):
        raise UnprintableMemoryError()
    metadata = json.loads(Path(only_bundle(tmp_path / "dumps"), "metadata.json").read_text())
    assert metadata["exception"]["type"] == "UnprintableMemoryError"
    assert metadata["exception"]["message"] == ""


def test_an_unprintable_exception_in_a_thread_keeps_its_traceback(tmp_path: Path) -> None:
    result = run_script("""
        import threading, memspan
        memspan.configure(dump_dir="dumps", export_interval_s=60)

        class Unprintable(MemoryError):
            def __str__(self):
                raise ValueError("__str__ is broken")

        def loader_body():
            raise Unprintable()

        thread = threading.Thread(target=loader_body, name="loader")
        thread.start(); thread.join()
        memspan.shutdown()
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Exception in threading.excepthook" not in result.stderr
    assert "Exception in thread loader" in result.stderr
    assert "in loader_body" in result.stderr and "Unprintable" in result.stderr
    metadata = json.loads(Path(only_bundle(tmp_path / "dumps"), "metadata.json").read_text())
    assert metadata["context"] == "uncaught exception in thread loader"


@needs_groups
def test_an_exception_group_holding_an_oom_is_dumped(oom_telemetry: Telemetry,
                                                      tmp_path: Path) -> None:
    group = EXCEPTION_GROUP("workers", [ValueError("bad row"),
                                       torch.OutOfMemoryError(FRAGMENTED)])
    with pytest.raises(EXCEPTION_GROUP) as raised, oom_telemetry.tracker.phase("gather"):
        raise group
    assert raised.value is group
    manifest = json.loads(Path(only_bundle(tmp_path / "dumps"), "manifest.json").read_text())
    assert manifest["kind"] == "device_oom" and manifest["phase_path"] == "gather"
    (event,) = [e for e in oom_telemetry.span("gather").events if e.name == names.OOM_EVENT]
    assert (event.attributes or {})[names.OOM_REQUESTED_BYTES] == 224 * MIB


@needs_groups
def test_a_group_with_a_memory_error_in_a_thread_is_dumped(tmp_path: Path) -> None:
    result = run_script("""
        import threading, memspan
        memspan.configure(dump_dir="dumps", export_interval_s=60)
        def work():
            raise ExceptionGroup("batch", [MemoryError("shard 3")])
        thread = threading.Thread(target=work, name="shards")
        thread.start(); thread.join()
        memspan.shutdown()
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ExceptionGroup: batch" in result.stderr and "MemoryError: shard 3" in result.stderr
    manifest = json.loads(Path(only_bundle(tmp_path / "dumps"), "manifest.json").read_text())
    assert manifest["kind"] == "host_oom"
