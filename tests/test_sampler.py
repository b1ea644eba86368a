"""The sampler thread and the observable instruments it feeds."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest

from conftest import Telemetry
from fakes import FakeCudaApi
from memspan import MemspanConfig, names
from memspan.metric_catalogue import Cadence
from memspan.sampling import Sampler
from memspan.sources import CgroupMemorySource, HostMemorySource, Reading, TorchAllocatorSource
from scripted import ScriptedSource

GPU0 = (("hw.id", "GPU-a"), ("hw.name", "NVIDIA H100 80GB HBM3"), ("hw.vendor", "nvidia"))
GPU1 = (("hw.id", "GPU-b"), ("hw.name", "NVIDIA A100-SXM4-40GB"), ("hw.vendor", "nvidia"))
TORCH0 = (("hw.id", "GPU-00000000-fake"), ("memspan.memory.device", "cuda:0"))


def points(telemetry: Telemetry) -> dict[str, dict[tuple[tuple[str, object], ...], object]]:
    out: dict[str, dict[tuple[tuple[str, object], ...], object]] = {}
    for name, metric in telemetry.metrics().items():
        out[name] = {tuple(sorted(p.attributes.items())): p.value
                     for p in metric.data.data_points if hasattr(p, "value")}
    return out


def test_every_instrument_name_unit_and_attributes(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    nvml = ScriptedSource("nvml", [
        Reading(names.GPU_MEMORY_USAGE, 20 * 2**30, GPU0),
        Reading(names.GPU_MEMORY_USAGE, 2**30, GPU1),
        Reading(names.GPU_MEMORY_LIMIT, 80 * 2**30, GPU0),
        Reading(names.GPU_MEMORY_LIMIT, 40 * 2**30, GPU1),
        Reading(names.GPU_MEMORY_UTILIZATION, 0.25, GPU0),
        Reading(names.GPU_UTILIZATION, 0.75, GPU0),
        Reading(names.GPU_PROCESS_MEMORY_USAGE, 3 * 2**30, GPU0),
    ])
    api = FakeCudaApi(devices=1)
    api.allocate(4096)
    t = telemetry_factory(sources=[HostMemorySource(), TorchAllocatorSource(api), nvml,
                                   CgroupMemorySource()])
    t.tracker.sampler.sample_once()
    metrics = t.metrics()
    expected_units = {
        names.GPU_MEMORY_USAGE: "By", names.GPU_MEMORY_LIMIT: "By",
        names.GPU_MEMORY_UTILIZATION: "1", names.GPU_UTILIZATION: "1",
        names.GPU_PROCESS_MEMORY_USAGE: "By", names.TORCH_ALLOCATED: "By",
        names.TORCH_RESERVED: "By", names.TORCH_ACTIVE: "By", names.TORCH_INACTIVE_SPLIT: "By",
        names.TORCH_ALLOCATED_WINDOW_PEAK: "By", names.TORCH_RESERVED_WINDOW_PEAK: "By",
        names.TORCH_ALLOC_RETRIES: "1", names.TORCH_OOMS: "1",
        names.PROCESS_MEMORY_USAGE: "By", names.PROCESS_MEMORY_WINDOW_PEAK: "By",
    }
    for name, unit in expected_units.items():
        assert name in metrics, name
        assert metrics[name].unit == unit, name
    values = {name: {tuple(sorted(p.attributes.items())): p.value
                     for p in metric.data.data_points} for name, metric in metrics.items()}
    assert values[names.GPU_MEMORY_USAGE] == {GPU0: 20 * 2**30, GPU1: 2**30}
    assert values[names.GPU_MEMORY_LIMIT][GPU1] == 40 * 2**30
    assert values[names.TORCH_ALLOCATED] == {TORCH0: 4096}
    assert values[names.TORCH_OOMS] == {TORCH0: 0}
    assert list(values[names.PROCESS_MEMORY_USAGE]) == [()]
    assert metrics[names.GPU_UTILIZATION].data.data_points[0].value == pytest.approx(0.75)
    from opentelemetry.sdk.metrics.export import Gauge, Sum

    assert isinstance(metrics[names.GPU_MEMORY_USAGE].data, Sum)
    assert metrics[names.GPU_MEMORY_USAGE].data.is_monotonic is False
    assert isinstance(metrics[names.TORCH_OOMS].data, Sum)
    assert metrics[names.TORCH_OOMS].data.is_monotonic is True
    assert isinstance(metrics[names.TORCH_ALLOCATED_WINDOW_PEAK].data, Gauge)


def test_window_peak_resets_at_each_collection(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    source = ScriptedSource("host", [Reading(names.PROCESS_MEMORY_WINDOW_PEAK, 100)])
    t = telemetry_factory(sources=[source])
    sampler = t.tracker.sampler
    sampler.sample_once()
    source.readings = [Reading(names.PROCESS_MEMORY_WINDOW_PEAK, 900)]
    sampler.sample_once()
    source.readings = [Reading(names.PROCESS_MEMORY_WINDOW_PEAK, 200)]
    sampler.sample_once()
    assert points(t)[names.PROCESS_MEMORY_WINDOW_PEAK] == {(): 900}
    sampler.sample_once()
    assert points(t)[names.PROCESS_MEMORY_WINDOW_PEAK] == {(): 200}


def test_rss_metric_can_be_switched_off(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    t = telemetry_factory(config=MemspanConfig(rss_metric=False))
    t.tracker.sampler.sample_once()
    metrics = t.metrics()
    assert names.PROCESS_MEMORY_USAGE not in metrics
    assert names.PROCESS_MEMORY_WINDOW_PEAK in metrics


def test_disabled_instruments_report_nothing(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    t = telemetry_factory()
    t.tracker.sampler.sample_once()
    t.tracker.instruments.disable()
    metrics = t.metrics()
    synchronous = {names.PHASE_DURATION, names.OOM_COUNT}  # not observable: never disabled
    assert all(not m.data.data_points for n, m in metrics.items() if n not in synchronous)


def test_a_failing_source_is_degraded_counted_and_warned_once(
    telemetry_factory, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    broken = ScriptedSource("broken", error=OSError("device vanished"))
    healthy = ScriptedSource("healthy", [Reading(names.CGROUP_MEMORY_USAGE, 5)])
    t = telemetry_factory(sources=[broken, healthy])
    with caplog.at_level(logging.WARNING, logger="memspan"):
        for _ in range(3):
            t.tracker.sampler.sample_once()
    # degraded, not disabled: the failing source alone is reported, and still asked every tick
    degraded = [r.getMessage() for r in caplog.records if "marked degraded" in r.getMessage()]
    assert len(degraded) == 1 and "memory source 'broken' failed" in degraded[0]
    assert "'healthy'" not in caplog.text
    assert (broken.samples, healthy.samples) == (3, 3)
    values = points(t)
    dropped = values[names.RECORDER_DROPPED]
    assert dropped[(("memspan.reason", "source_error"),)] == 3
    assert {v for k, v in dropped.items() if k != (("memspan.reason", "source_error"),)} == {0}
    assert values[names.CGROUP_MEMORY_USAGE] == {(): 5}


def test_a_source_failing_forever_is_no_longer_asked() -> None:
    broken = ScriptedSource("broken", error=RuntimeError("x"))
    sampler = Sampler([broken])
    for _ in range(150):
        sampler.sample_once()
    assert broken.samples == 100


def test_counter_increases_reach_listeners() -> None:
    source = ScriptedSource("torch", [Reading(names.TORCH_OOMS, 0, TORCH0)])
    sampler = Sampler([source])
    seen = []
    sampler.add_listener(lambda readings, increases: seen.extend(increases))
    sampler.sample_once()
    source.readings = [Reading(names.TORCH_OOMS, 2, TORCH0)]
    sampler.sample_once()
    sampler.sample_once()
    assert len(seen) == 1
    assert (seen[0].metric, seen[0].before, seen[0].after) == (names.TORCH_OOMS, 0, 2)


def test_thread_samples_at_a_fixed_rate_and_stops_by_its_deadline() -> None:
    source = ScriptedSource("s", [Reading(names.CGROUP_MEMORY_USAGE, 1)])
    slow = ScriptedSource("nvml", [Reading(names.GPU_UTILIZATION, 0.5, GPU0)],
                          cadence=Cadence.SLOW)
    sampler = Sampler([source, slow], interval_s=0.02, slow_interval_s=0.2)
    sampler.start()
    time.sleep(0.5)
    started = time.monotonic()
    assert sampler.shutdown(timeout_s=2.0)
    assert time.monotonic() - started < 2.0
    assert not sampler.running
    assert 5 <= source.samples <= 30  # ~25 at 20 ms; loose bounds for loaded machines
    assert 1 <= slow.samples <= 5  # the slow source runs at its own cadence (~3)


def test_sampler_rejects_bad_intervals() -> None:
    with pytest.raises(ValueError, match="sampler interval must be > 0 seconds"):
        Sampler([], interval_s=0)


def test_forked_child_samples_its_own_process() -> None:
    host = HostMemorySource()
    scripted = ScriptedSource("s", [Reading(names.CGROUP_MEMORY_USAGE, 1)])
    sampler = Sampler([host, scripted], interval_s=0.02)
    sampler.start()
    time.sleep(0.1)
    parent_rss = host.rss_bytes()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        status = 1
        try:
            before = host.rss_bytes()
            block = bytearray(256 * 1024 * 1024)
            block[::4096] = b"x" * len(block[::4096])
            time.sleep(0.3)
            rss = sampler.state.value(names.PROCESS_MEMORY_USAGE)
            report = {"rss": rss, "running": sampler.running, "forked": scripted.forked,
                      "own_rss": host.rss_bytes(), "before": before}
            os.write(write_end, json.dumps(report).encode())
            sampler.shutdown(1.0)
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    _, wait_status = os.waitpid(pid, 0)
    report = json.loads(os.read(read_end, 4096))
    os.close(read_end)
    sampler.shutdown()
    assert os.waitstatus_to_exitcode(wait_status) == 0
    assert report["running"] is True and report["forked"] == 1
    assert parent_rss is not None
    # the sampled value is the child's own RSS (with the 256 MiB block only the child has)
    assert abs(report["rss"] - report["own_rss"]) < 32 * 1024 * 1024
    assert report["rss"] - report["before"] >= 200 * 1024 * 1024
    parent_now = host.rss_bytes()
    assert parent_now is not None and parent_now < report["rss"] + 64 * 1024 * 1024


def test_sampler_on_this_cpu_machine_never_initialises_cuda(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    t = telemetry_factory(sources=None, start_sampler=True,
                          config=MemspanConfig(sample_interval_s=0.01))
    torch.nn.Linear(8, 8)(torch.randn(2, 8))
    time.sleep(0.2)
    metrics = t.metrics()
    assert torch.cuda.is_initialized() is False
    assert names.PROCESS_MEMORY_USAGE in metrics
    if CgroupMemorySource().layout is not None:
        assert names.CGROUP_MEMORY_USAGE in metrics
    assert names.TORCH_ALLOCATED not in metrics or not metrics[names.TORCH_ALLOCATED].data.data_points
