"""scripts/gpu_check.py: its checks run against the GPU fakes where they can, and on this CPU
machine the script skips the GPU checks, clearly.

The NVML check and the ``hw.id`` check are run for real: NVML through the genuine ``pynvml``
wrapper over the fake driver library (tests/fake_nvml.py), ``torch.cuda`` through the fake
allocator API (tests/fakes.py), and ``nvidia-smi`` as a real executable on ``PATH`` that prints
what the fake GPU would. The checks that allocate CUDA memory need a GPU and run there only.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import torch

from fake_nvml import FakeGpu, FakeNvmlLib, installed
from fakes import FakeCudaApi
from memspan.sources import TorchAllocatorSource

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
QUERY = "--query-gpu=uuid,memory.used,memory.total,name"
H100 = FakeGpu("GPU-aaaa-1111", "NVIDIA H100 80GB HBM3", "00000000:18:00.0",
               total=80 * 2**30, used=20 * 2**30)


@pytest.fixture
def gpu_check() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fake_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Put an ``nvidia-smi`` on PATH that answers the script's query with ``csv``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")

    def write(csv: str) -> None:
        script = bin_dir / "nvidia-smi"
        (tmp_path / "answer.csv").write_text(csv)
        script.write_text(f'#!/bin/sh\ncase "$*" in *"{QUERY}"*) ;; *) exit 2;; esac\n'
                          f'cat "{tmp_path / "answer.csv"}"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)

    yield write


def last(gpu_check: ModuleType) -> tuple[str, str, str]:
    result: tuple[str, str, str] = gpu_check.RESULTS[-1]
    return result


def test_nvml_check_passes_when_nvml_and_nvidia_smi_agree(gpu_check, fake_smi) -> None:  # type: ignore[no-untyped-def]
    fake_smi("GPU-aaaa-1111, 20480, 81920, NVIDIA H100 80GB HBM3\n")
    with installed(FakeNvmlLib([H100])):
        gpu_check.check("nvml", gpu_check.nvml_vs_smi)
    name, status, detail = last(gpu_check)
    assert (name, status) == ("nvml", "PASS"), detail
    assert detail == "GPU-aaaa-1111: used 20480/20480 MiB, total 81920/81920 MiB"


def test_nvml_check_fails_when_nvidia_smi_sees_another_total(gpu_check, fake_smi) -> None:  # type: ignore[no-untyped-def]
    fake_smi("GPU-aaaa-1111, 20480, 40960, NVIDIA H100 80GB HBM3\n")
    with installed(FakeNvmlLib([H100])):
        gpu_check.check("nvml", gpu_check.nvml_vs_smi)
    _, status, detail = last(gpu_check)
    assert status == "FAIL" and detail == "total 81920.0 vs 40960"


def test_nvml_check_fails_when_nvml_misses_a_gpu_nvidia_smi_lists(gpu_check, fake_smi) -> None:  # type: ignore[no-untyped-def]
    fake_smi("GPU-aaaa-1111, 20480, 81920, NVIDIA H100 80GB HBM3\n"
             "GPU-bbbb-2222, 1024, 40960, NVIDIA A100-SXM4-40GB\n")
    with installed(FakeNvmlLib([H100])):
        gpu_check.check("nvml", gpu_check.nvml_vs_smi)
    _, status, detail = last(gpu_check)
    assert status == "FAIL" and "KeyError" in detail and "GPU-bbbb-2222" in detail


def test_hw_id_check_compares_the_allocator_identity_with_nvidia_smi(
        gpu_check, fake_smi, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    api = FakeCudaApi()
    uuid = api.device_identity(0).hw_id
    monkeypatch.setattr("memspan.sources.TorchAllocatorSource",
                        lambda: TorchAllocatorSource(api))
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: SimpleNamespace(name="NVIDIA H100 80GB HBM3"))
    fake_smi(f"{uuid}, 0, 81920, NVIDIA H100 80GB HBM3\n")
    gpu_check.check("hw.id", gpu_check.hw_id_is_uuid)
    assert last(gpu_check)[1:] == (
        "PASS", f"cuda:0 hw.id {uuid} (NVIDIA H100 80GB HBM3) is an nvidia-smi UUID")
    fake_smi("GPU-ffff-0000, 0, 81920, NVIDIA H100 80GB HBM3\n")
    gpu_check.check("hw.id", gpu_check.hw_id_is_uuid)
    _, status, detail = last(gpu_check)
    assert status == "FAIL" and uuid in detail and "GPU-ffff-0000" in detail


def test_smi_rows_keep_commas_in_gpu_names(gpu_check, fake_smi) -> None:  # type: ignore[no-untyped-def]
    fake_smi("GPU-a, 1, 2, NVIDIA H100, rev 2\n")
    assert gpu_check.smi() == [{"uuid": "GPU-a", "used_mib": "1", "total_mib": "2",
                                "name": "NVIDIA H100, rev 2"}]


def test_check_reports_pass_fail_and_a_crash_with_its_traceback(gpu_check) -> None:  # type: ignore[no-untyped-def]
    gpu_check.check("ok", lambda: "fine")
    assert last(gpu_check) == ("ok", "PASS", "fine")

    def wrong() -> str:
        raise AssertionError("3 != 4")

    gpu_check.check("wrong", wrong)
    assert last(gpu_check) == ("wrong", "FAIL", "3 != 4")
    gpu_check.check("crash", lambda: str(1 // 0))
    _, status, detail = last(gpu_check)
    assert status == "FAIL" and detail.startswith("ZeroDivisionError") and "Traceback" in detail


def test_gpu_check_skips_cleanly_without_a_gpu() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                            timeout=600, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = [line for line in result.stdout.splitlines() if line.split(" ", 1)[0] in
             {"PASS", "FAIL", "SKIP"}]
    assert len(lines) == 7
    if not torch.cuda.is_available():
        assert all(line.startswith("SKIP") for line in lines)
        assert "no CUDA device here" in lines[0]
    else:  # pragma: no cover - a GPU machine runs the real checks
        assert not [line for line in lines if line.startswith("FAIL")], result.stdout
