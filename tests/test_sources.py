"""Memory sources driven through their real code paths: /proc, cgroup trees, pynvml, torch."""

from __future__ import annotations

import os
from pathlib import Path

import pynvml
import pytest

from fake_nvml import LIB_RM_VERSION_MISMATCH, FakeGpu, FakeNvmlLib, installed
from fakes import FakeCudaApi
from memspan import names
from memspan.sources import CgroupMemorySource, HostMemorySource, NvmlSource, TorchAllocatorSource
from memspan.sources.cgroup import detect_layout

# -- host ------------------------------------------------------------------------------------


def test_host_rss_matches_proc_statm() -> None:
    source = HostMemorySource()
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    rss = source.rss_bytes()
    assert rss is not None
    assert abs(rss - pages * os.sysconf("SC_PAGE_SIZE")) < 16 * 1024 * 1024
    peak = source.peak_rss_bytes()
    assert peak is not None and peak >= rss // 2
    readings = {r.metric: r.value for r in source.sample()}
    assert set(readings) == {names.PROCESS_MEMORY_USAGE, names.PROCESS_MEMORY_WINDOW_PEAK}


def test_host_rss_sees_an_allocation() -> None:
    source = HostMemorySource()
    before = source.rss_bytes()
    block = bytearray(64 * 1024 * 1024)
    after = source.rss_bytes()
    assert before is not None and after is not None
    assert after - before >= 60 * 1024 * 1024
    del block


def _psutil_installed() -> bool:
    try:
        import psutil  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(_psutil_installed(),
                    reason="psutil is installed: without /proc the source falls back to it")
def test_host_source_without_proc_is_unavailable(tmp_path: Path) -> None:
    source = HostMemorySource(proc_root=str(tmp_path))
    assert source.rss_bytes() is None
    assert source.sample() == ()
    status = source.probe()
    assert not status.available
    assert str(tmp_path) in status.reason and "psutil" in status.reason


# -- cgroup ----------------------------------------------------------------------------------


def write_tree(root: Path, files: dict[str, str]) -> None:
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def test_cgroup_v2(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "proc/self/cgroup": "0::/job.slice/run-1\n",
        "sys/fs/cgroup/cgroup.controllers": "cpu memory\n",
        "sys/fs/cgroup/job.slice/run-1/memory.current": "1048576\n",
        "sys/fs/cgroup/job.slice/run-1/memory.max": "8589934592\n",
        "sys/fs/cgroup/job.slice/run-1/memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\n",
    })
    source = CgroupMemorySource(str(tmp_path / "proc"), str(tmp_path / "sys"))
    assert source.layout is not None and source.layout.version == 2
    assert {r.metric: r.value for r in source.sample()} == {
        names.CGROUP_MEMORY_USAGE: 1048576,
        names.CGROUP_MEMORY_LIMIT: 8589934592,
        names.CGROUP_OOM_KILLS: 2,
    }


def test_cgroup_v2_unlimited_has_no_limit(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "proc/self/cgroup": "0::/\n",
        "sys/fs/cgroup/cgroup.controllers": "memory\n",
        "sys/fs/cgroup/memory.current": "4096\n",
        "sys/fs/cgroup/memory.max": "max\n",
        "sys/fs/cgroup/memory.events": "oom_kill 0\n",
    })
    readings = {r.metric: r.value for r in CgroupMemorySource(
        str(tmp_path / "proc"), str(tmp_path / "sys")).sample()}
    assert names.CGROUP_MEMORY_LIMIT not in readings
    assert readings[names.CGROUP_MEMORY_USAGE] == 4096


def test_cgroup_v1(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "proc/self/cgroup": "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n",
        "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes": "2048\n",
        "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes": "1073741824\n",
        "sys/fs/cgroup/memory/docker/abc/memory.oom_control":
            "oom_kill_disable 0\nunder_oom 0\noom_kill 5\n",
    })
    source = CgroupMemorySource(str(tmp_path / "proc"), str(tmp_path / "sys"))
    assert source.layout is not None and source.layout.version == 1
    assert {r.metric: r.value for r in source.sample()} == {
        names.CGROUP_MEMORY_USAGE: 2048,
        names.CGROUP_MEMORY_LIMIT: 1073741824,
        names.CGROUP_OOM_KILLS: 5,
    }


def test_cgroup_hybrid_uses_the_v1_memory_controller(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "proc/self/cgroup": "9:name=systemd:/\n4:memory:/job\n0::/\n",
        "sys/fs/cgroup/unified/cgroup.controllers": "\n",
        "sys/fs/cgroup/memory/job/memory.usage_in_bytes": "777\n",
        "sys/fs/cgroup/memory/job/memory.limit_in_bytes": "9223372036854771712\n",
        "sys/fs/cgroup/memory/job/memory.oom_control": "oom_kill 0\n",
    })
    source = CgroupMemorySource(str(tmp_path / "proc"), str(tmp_path / "sys"))
    assert source.layout is not None and source.layout.version == 1
    readings = {r.metric: r.value for r in source.sample()}
    assert readings == {names.CGROUP_MEMORY_USAGE: 777, names.CGROUP_OOM_KILLS: 0}


def test_cgroup_namespace_falls_back_to_the_mount_root(tmp_path: Path) -> None:
    write_tree(tmp_path, {
        "proc/self/cgroup": "0::/not/visible/here\n",
        "sys/fs/cgroup/cgroup.controllers": "memory\n",
        "sys/fs/cgroup/memory.current": "10\n",
    })
    layout = detect_layout(str(tmp_path / "proc"), str(tmp_path / "sys"))
    assert layout is not None and layout.directory == str(tmp_path / "sys/fs/cgroup")


def test_cgroup_missing_and_malformed(tmp_path: Path) -> None:
    missing = CgroupMemorySource(str(tmp_path / "nothing"), str(tmp_path / "nothing"))
    assert missing.sample() == []  or missing.sample() == ()
    assert not missing.probe().available
    write_tree(tmp_path, {
        "proc/self/cgroup": "0::/\n",
        "sys/fs/cgroup/cgroup.controllers": "memory\n",
        "sys/fs/cgroup/memory.current": "lots\n",
        "sys/fs/cgroup/memory.max": "-5\n",
        "sys/fs/cgroup/memory.events": "oom_kill many\n",
    })
    malformed = CgroupMemorySource(str(tmp_path / "proc"), str(tmp_path / "sys"))
    assert list(malformed.sample()) == []


def test_cgroup_on_this_machine() -> None:
    source = CgroupMemorySource()
    if source.layout is None:
        pytest.skip("this machine has no memory cgroup")
    readings = {r.metric: r.value for r in source.sample()}
    assert readings[names.CGROUP_MEMORY_USAGE] > 0


# -- NVML ------------------------------------------------------------------------------------

GPUS = [
    FakeGpu("GPU-aaaa-1111", "NVIDIA H100 80GB HBM3", "00000000:18:00.0",
            total=80 * 2**30, used=20 * 2**30, util_gpu=75,
            processes=[(os.getpid(), 3 * 2**30), (1, 2**30)]),
    FakeGpu("GPU-bbbb-2222", "NVIDIA A100-SXM4-40GB", "00000000:3B:00.0",
            total=40 * 2**30, used=2**30, util_gpu=5),
]


def test_nvml_through_the_real_pynvml_wrapper() -> None:
    with installed(FakeNvmlLib(GPUS)) as lib:
        source = NvmlSource(pynvml)
        assert source.probe().available
        readings = source.sample()
        source.close()
    by_key = {(r.metric, dict(r.attributes)["hw.id"]): r.value for r in readings}
    assert by_key[(names.GPU_MEMORY_USAGE, "GPU-aaaa-1111")] == 20 * 2**30
    assert by_key[(names.GPU_MEMORY_LIMIT, "GPU-bbbb-2222")] == 40 * 2**30
    assert by_key[(names.GPU_MEMORY_UTILIZATION, "GPU-aaaa-1111")] == pytest.approx(0.25)
    assert by_key[(names.GPU_UTILIZATION, "GPU-aaaa-1111")] == pytest.approx(0.75)
    assert by_key[(names.GPU_PROCESS_MEMORY_USAGE, "GPU-aaaa-1111")] == 3 * 2**30
    assert (names.GPU_PROCESS_MEMORY_USAGE, "GPU-bbbb-2222") not in by_key
    attrs = dict(next(r.attributes for r in readings if dict(r.attributes)["hw.id"] == "GPU-bbbb-2222"))
    assert attrs == {"hw.id": "GPU-bbbb-2222", "hw.name": "NVIDIA A100-SXM4-40GB", "hw.vendor": "nvidia"}
    assert "memory_v2" in lib.calls and "memory_v1" not in lib.calls
    assert lib.calls.count("init") == 1 and "shutdown" in lib.calls


def test_nvml_falls_back_to_memory_info_v1() -> None:
    with installed(FakeNvmlLib(GPUS, v2_memory=False)) as lib:
        readings = NvmlSource(pynvml).sample()
    assert "memory_v1" in lib.calls
    assert any(r.metric == names.GPU_MEMORY_USAGE and r.value == 20 * 2**30 for r in readings)


def test_nvml_reads_processes_at_a_lower_cadence() -> None:
    with installed(FakeNvmlLib(GPUS)) as lib:
        source = NvmlSource(pynvml, process_every=5)
        for _ in range(10):
            source.sample()
    # two refreshes in ten samples; a GPU with processes takes two calls (size, then fill)
    assert lib.calls.count("processes") == 2 * 3


def test_nvml_identifies_devices_by_uuid_and_pci_bus_id() -> None:
    # a torch device meets its NVML device by hw.id (UUID), else by PCI bus id, never by index
    with installed(FakeNvmlLib(GPUS)):
        source = NvmlSource(pynvml)
        devices = list(source.devices())
        readings = source.sample()
    by_uuid = {d.hw_id: d for d in devices}
    by_pci = {d.pci_bus_id.upper().lstrip("0"): d for d in devices}
    assert by_uuid["GPU-bbbb-2222"].name == "NVIDIA A100-SXM4-40GB"
    torch_pci = "0000:3b:00.0".upper().replace("0000:", "00000000:")  # torch's spelling
    assert by_pci[torch_pci.lstrip("0")].hw_id == "GPU-bbbb-2222"
    assert {dict(r.attributes)[names.HW_ID] for r in readings} == set(by_uuid)


def test_nvml_version_mismatch_makes_the_source_unavailable(caplog: pytest.LogCaptureFixture) -> None:
    with installed(FakeNvmlLib(GPUS, init_error=LIB_RM_VERSION_MISMATCH)), \
            caplog.at_level("INFO", logger="memspan"):
        source = NvmlSource(pynvml)
        status = source.probe()
        assert source.sample() == ()
    assert not status.available
    assert "version mismatch" in status.reason
    assert caplog.text.count("NVML source disabled") == 1


def test_nvml_absent_on_this_machine() -> None:
    source = NvmlSource()
    status = source.probe()
    if status.available:
        pytest.skip("this machine has an NVIDIA driver")
    assert "NVML" in status.reason
    assert source.sample() == ()


def test_nvml_reinitialises_after_fork() -> None:
    with installed(FakeNvmlLib(GPUS)) as lib:
        source = NvmlSource(pynvml)
        source.sample()
        source.after_fork()
        source.sample()
    assert lib.calls.count("init") == 2


# -- torch allocator -------------------------------------------------------------------------


def test_torch_source_two_gpus_with_different_models() -> None:
    api = FakeCudaApi(devices=2, names=("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"))
    api.allocate(1000, device=0)
    api.allocate(5000, device=1)
    readings = TorchAllocatorSource(api).sample()
    values = {(r.metric, dict(r.attributes)[names.MEMORY_DEVICE]): r.value for r in readings}
    assert values[(names.TORCH_ALLOCATED, "cuda:0")] == 1000
    assert values[(names.TORCH_ALLOCATED, "cuda:1")] == 5000
    assert values[(names.TORCH_RESERVED, "cuda:1")] == 5000
    ids = {dict(r.attributes)[names.HW_ID] for r in readings}
    assert ids == {"GPU-00000000-fake", "GPU-00000001-fake"}
    assert all(call.startswith(("memory_stats_nested", "device_identity")) for call in api.calls)


def test_torch_window_peak_uses_the_allocator_high_water_mark() -> None:
    api = FakeCudaApi()
    source = TorchAllocatorSource(api)
    source.sample()
    api.allocate(9000)
    api.free(8000)  # between two ticks: the sampled value would miss the 9000 spike
    readings = {r.metric: r.value for r in source.sample()}
    assert readings[names.TORCH_ALLOCATED] == 1000
    assert readings[names.TORCH_ALLOCATED_WINDOW_PEAK] == 9000
    readings = {r.metric: r.value for r in source.sample()}
    assert readings[names.TORCH_ALLOCATED_WINDOW_PEAK] == 1000


def test_torch_source_reads_nothing_before_initialisation() -> None:
    api = FakeCudaApi(initialized=False)
    source = TorchAllocatorSource(api)
    assert source.sample() == ()
    assert source.devices() == ()
    assert api.calls == []


def test_real_torch_on_cpu_never_initialises_cuda() -> None:
    torch = pytest.importorskip("torch")
    source = TorchAllocatorSource()
    assert source.sample() == ()
    # nothing is read before the backend is initialised: no device, no figures
    assert source.initialized() is False
    assert source.devices() == ()
    assert source.snapshot() == {"initialized": False}
    assert torch.cuda.is_initialized() is False
