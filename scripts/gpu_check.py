"""Verify memspan's GPU paths on a machine with an NVIDIA GPU; one PASS/FAIL/SKIP line each.

    python scripts/gpu_check.py

Checks: a real CUDA OOM inside nested phases (span event, bundle, ``cuda_snapshot.pickle``
loadable by ``torch.cuda._memory_viz``, allocator-observer figures), NVML figures against
``nvidia-smi``, allocator metrics against ``torch.cuda.memory_allocated``, ``hw.id`` against
the GPU UUID, exact peaks inside a phase, and the overhead of three phases per step on a
ResNet-style training step. On a machine without CUDA every GPU check is SKIPped with the
reason and the script exits 0 (the test suite runs it that way).
"""

from __future__ import annotations

import json
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS: list[tuple[str, str, str]] = []


def report(name: str, status: str, detail: str) -> None:
    RESULTS.append((name, status, detail))
    print(f"{status:<4} {name}: {detail}", flush=True)


def check(name: str, function: Callable[[], str]) -> None:
    try:
        report(name, "PASS", function())
    except AssertionError as failure:
        report(name, "FAIL", str(failure) or "assertion failed")
    except Exception as error:  # a crash is a failure with its traceback
        report(name, "FAIL", f"{type(error).__name__}: {error}\n{traceback.format_exc()}")


CHECKS = ("cuda OOM in nested phases", "NVML vs nvidia-smi", "allocator metrics vs torch",
          "hw.id is the GPU UUID", "exact peak inside a phase", "ResNet-style step overhead",
          "phase cost with CUDA initialised")


def telemetry(config: Any) -> tuple[Any, Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import memspan

    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    tracker = memspan.Tracker(tracer_provider=tracer_provider,
                              meter_provider=MeterProvider(metric_readers=[reader]), config=config)
    return tracker, exporter, reader


def cuda_oom_in_nested_phases(dump_dir: str) -> str:
    import torch

    import memspan
    from memspan import names

    tracker, exporter, _ = telemetry(memspan.MemspanConfig(dump_dir=dump_dir, cuda_history=True))
    try:
        torch.zeros(1, device="cuda")
        _free, total = torch.cuda.mem_get_info()
        request = int(total * 2)
        try:
            with tracker.phase("train"), tracker.phase("step"), tracker.phase("forward"):
                torch.empty(request, dtype=torch.uint8, device="cuda")
        except torch.OutOfMemoryError as error:
            caught = error
        else:
            raise AssertionError("no OutOfMemoryError for a request twice the GPU's memory")
    finally:
        tracker.shutdown()
    forward = next(s for s in exporter.get_finished_spans() if s.name == "forward")
    events = {e.name: dict(e.attributes or {}) for e in forward.events}
    assert "memspan.oom" in events and "exception" in events, f"events: {list(events)}"
    oom = events["memspan.oom"]
    path = oom.get(names.OOM_DUMP_PATH)
    assert path and Path(str(path)).is_dir(), f"no bundle: {oom}"
    manifest = json.loads(Path(str(path), "manifest.json").read_text())
    assert manifest["span_id"] == f"{forward.context.span_id:016x}"
    observer = json.loads(Path(str(path), "metadata.json").read_text()).get("observer")
    assert observer, "the allocator OOM observer did not fire"
    assert observer["requested_bytes"] >= request, f"observer requested {observer['requested_bytes']}"
    snapshot_file = Path(str(path), "cuda_snapshot.pickle")
    assert snapshot_file.exists(), "no cuda_snapshot.pickle with cuda_history=True"
    snapshot = pickle.loads(snapshot_file.read_bytes())
    from torch.cuda import _memory_viz

    html = _memory_viz.trace_plot(snapshot)
    assert "<html" in html.lower() or len(html) > 1000
    return (f"{type(caught).__name__}; observer requested {observer['requested_bytes']} B, "
            f"free {observer['device_free_bytes']} B; event requested "
            f"{oom.get(names.OOM_REQUESTED_BYTES)}; bundle {path}; snapshot "
            f"{snapshot_file.stat().st_size} B loads in _memory_viz")


def smi() -> list[dict[str, str]]:
    output = subprocess.run(
        ["nvidia-smi", "--query-gpu=uuid,memory.used,memory.total,name", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True, timeout=30).stdout
    rows = []
    for line in output.strip().splitlines():
        uuid, used, total, name = (part.strip() for part in line.split(",", 3))
        rows.append({"uuid": uuid, "used_mib": used, "total_mib": total, "name": name})
    return rows


def nvml_vs_smi() -> str:
    from memspan import names
    from memspan.sources import NvmlSource

    source = NvmlSource()
    assert source.probe().available, source.probe().reason
    readings = source.sample()
    by_id = {(r.metric, dict(r.attributes)["hw.id"]): r.value for r in readings}
    out = []
    for row in smi():
        used = by_id[(names.GPU_MEMORY_USAGE, row["uuid"])] / 2**20
        total = by_id[(names.GPU_MEMORY_LIMIT, row["uuid"])] / 2**20
        assert abs(total - float(row["total_mib"])) <= 2, f"total {total} vs {row['total_mib']}"
        # NVML v2 "used" leaves out driver-reserved memory that some nvidia-smi versions count
        assert abs(used - float(row["used_mib"])) <= 1024, f"used {used} vs {row['used_mib']}"
        out.append(f"{row['uuid']}: used {used:.0f}/{row['used_mib']} MiB, "
                   f"total {total:.0f}/{row['total_mib']} MiB")
    return "; ".join(out)


def allocator_vs_torch() -> str:
    import torch

    from memspan import names
    from memspan.sources import TorchAllocatorSource

    block = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    readings = TorchAllocatorSource().sample()
    allocated = next(r.value for r in readings if r.metric == names.TORCH_ALLOCATED
                     and dict(r.attributes)[names.MEMORY_DEVICE] == "cuda:0")
    reserved = next(r.value for r in readings if r.metric == names.TORCH_RESERVED
                    and dict(r.attributes)[names.MEMORY_DEVICE] == "cuda:0")
    assert allocated == torch.cuda.memory_allocated(0), (allocated, torch.cuda.memory_allocated(0))
    assert reserved == torch.cuda.memory_reserved(0), (reserved, torch.cuda.memory_reserved(0))
    del block
    return f"allocated {allocated} B == torch.cuda.memory_allocated; reserved {reserved} B matches"


def hw_id_is_uuid() -> str:
    import torch

    from memspan.sources import TorchAllocatorSource

    identity = TorchAllocatorSource().identity(0)
    props = torch.cuda.get_device_properties(0)
    uuids = {row["uuid"] for row in smi()}
    assert identity.hw_id in uuids, f"{identity.hw_id} not among nvidia-smi UUIDs {uuids}"
    return f"cuda:0 hw.id {identity.hw_id} ({props.name}) is an nvidia-smi UUID"


def exact_peak() -> str:
    import torch

    import memspan
    from memspan import names

    tracker, exporter, _ = telemetry(memspan.MemspanConfig(dump_dir=tempfile.mkdtemp()))
    try:
        torch.zeros(1, device="cuda")
        with tracker.phase("spike"):
            block = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
            del block
    finally:
        tracker.shutdown()
    attrs = dict(exporter.get_finished_spans()[-1].attributes or {})
    start, peak = attrs[names.ALLOCATED_START], attrs[names.ALLOCATED_PEAK]
    assert attrs[names.PEAK_EXACT] is True, attrs
    assert peak - start >= 1 << 30, f"peak {peak} start {start}"
    return f"peak {peak - start} B above start, peak_exact=true, end {attrs[names.ALLOCATED_END]}"


def resnet_overhead() -> str:
    import torch
    from torch import nn

    import memspan

    class Block(nn.Module):
        def __init__(self, channels: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                nn.ReLU(), nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                nn.BatchNorm2d(channels))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x + self.body(x))

    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), *[Block(64) for _ in range(8)],
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 10)).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    inputs = torch.randn(128, 3, 32, 32, device="cuda")
    labels = torch.randint(0, 10, (128,), device="cuda")
    tracker, _, _ = telemetry(memspan.MemspanConfig(dump_dir=tempfile.mkdtemp()))

    def step(phased: bool) -> float:
        torch.cuda.synchronize()
        started = time.perf_counter()
        if phased:
            with tracker.phase("forward"):
                loss = nn.functional.cross_entropy(model(inputs), labels)
            with tracker.phase("backward"):
                loss.backward()
            with tracker.phase("optimizer"):
                optimizer.step()
                optimizer.zero_grad()
        else:
            loss = nn.functional.cross_entropy(model(inputs), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        torch.cuda.synchronize()
        return time.perf_counter() - started

    for _ in range(10):
        step(False)
        step(True)
    plain, phased = [], []
    for _ in range(7):
        plain.append(statistics.median(step(False) for _ in range(20)))
        phased.append(statistics.median(step(True) for _ in range(20)))
    tracker.shutdown()
    base, inst = statistics.median(plain), statistics.median(phased)
    overhead = (inst / base - 1) * 100
    assert overhead <= 3.0, f"{overhead:.2f} % (step {base * 1e3:.2f} ms -> {inst * 1e3:.2f} ms)"
    return f"step {base * 1e3:.2f} ms -> {inst * 1e3:.2f} ms with 3 phases: {overhead:+.2f} %"


def phase_cost_on_cuda() -> str:
    """Caller's-thread CPU per phase with CUDA initialised (two allocator stats reads per
    phase) against a bare SDK span, side by side in alternating rounds."""
    import torch
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    import memspan

    class Null(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    torch.zeros(1, device="cuda")
    bare_provider, phase_provider = TracerProvider(), TracerProvider()
    for provider in (bare_provider, phase_provider):
        provider.add_span_processor(BatchSpanProcessor(Null(), max_queue_size=1 << 16))
    tracer = bare_provider.get_tracer("bench")
    tracker = memspan.Tracker(tracer_provider=phase_provider,
                              config=memspan.MemspanConfig(dump_dir=tempfile.mkdtemp()))
    assert tracker.torch_source is not None and tracker.torch_source.initialized()

    def bare(n: int) -> float:
        started = time.thread_time()
        for _ in range(n):
            with tracer.start_as_current_span("phase"):
                pass
        return (time.thread_time() - started) / n

    def phased(n: int) -> float:
        started = time.thread_time()
        for _ in range(n):
            with tracker.phase("phase"):
                pass
        took = (time.thread_time() - started) / n
        tracker.flush()
        return took

    bare_times, phase_times = [], []
    for _ in range(7):
        bare_times.append(bare(2000))
        phase_times.append(phased(2000))
    tracker.shutdown()
    base, cost = statistics.median(bare_times), statistics.median(phase_times)
    ratio = cost / base
    assert ratio <= 1.2, f"{cost * 1e6:.1f} us per phase = {ratio:.2f}x a bare span ({base * 1e6:.1f} us)"
    return f"{cost * 1e6:.1f} us per phase on the caller's thread = {ratio:.2f}x a bare span"


def main() -> int:
    try:
        import torch
    except ImportError:
        for name in CHECKS:
            report(name, "SKIP", "torch is not installed")
        return 0
    if not torch.cuda.is_available():
        for name in CHECKS:
            report(name, "SKIP", "no CUDA device here (torch.cuda.is_available() is False); "
                   "run this script on a machine with an NVIDIA GPU")
        return 0
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}",
          flush=True)
    dump_dir = tempfile.mkdtemp(prefix="memspan-gpu-check-")
    has_smi = shutil.which("nvidia-smi") is not None
    try:
        check(CHECKS[0], lambda: cuda_oom_in_nested_phases(dump_dir))
        torch.cuda.empty_cache()
        if has_smi:
            check(CHECKS[1], nvml_vs_smi)
        else:
            report(CHECKS[1], "SKIP", "nvidia-smi is not on PATH")
        check(CHECKS[2], allocator_vs_torch)
        if has_smi:
            check(CHECKS[3], hw_id_is_uuid)
        else:
            report(CHECKS[3], "SKIP", "nvidia-smi is not on PATH")
        check(CHECKS[4], exact_peak)
        check(CHECKS[5], resnet_overhead)
        check(CHECKS[6], phase_cost_on_cuda)
    finally:
        shutil.rmtree(dump_dir, ignore_errors=True)
    failed = [name for name, status, _ in RESULTS if status == "FAIL"]
    print(f"{len(RESULTS) - len(failed)}/{len(RESULTS)} checks passed or skipped", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
