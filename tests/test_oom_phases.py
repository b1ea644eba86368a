"""OOMs surfacing in phases, capture_oom blocks and uncaught: spans, bundles, counters."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from opentelemetry.trace import StatusCode

from conftest import Telemetry
from fakes import FakeCudaApi
from launcher_helpers import clean_env, run_python
from memspan import MemspanConfig, names
from memspan.oom.breadcrumb_stack import parse_open_stack
from memspan.oom.observer import AllocatorObserver
from memspan.oom.retention import list_bundles
from memspan.sources import HostMemorySource, TorchAllocatorSource

CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
            "79.15 GiB of which 1.44 GiB is free. Including non-PyTorch memory, this process "
            "has 77.70 GiB memory in use.")


@pytest.fixture
def oom_telemetry(telemetry_factory, tmp_path: Path) -> Telemetry:  # type: ignore[no-untyped-def]
    return telemetry_factory(config=MemspanConfig(dump_dir=str(tmp_path / "dumps")))


def oom_count(t: Telemetry) -> dict[tuple[tuple[str, Any], ...], int]:
    metric = t.metrics().get(names.OOM_COUNT)
    if metric is None:
        return {}
    return {tuple(sorted(p.attributes.items())): p.value for p in metric.data.data_points}


def test_cuda_oom_in_nested_phases(oom_telemetry: Telemetry, tmp_path: Path) -> None:
    t = oom_telemetry
    tracker = t.tracker
    error = torch.OutOfMemoryError(CUDA_OOM)
    tracer = t.tracer_provider.get_tracer("serving")
    with pytest.raises(torch.OutOfMemoryError) as raised, \
            tracer.start_as_current_span("POST /generate"), tracker.phase("train"), \
            tracker.phase("step"), tracker.phase("forward"):
        raise error
    assert raised.value is error
    bundles = list_bundles(str(tmp_path / "dumps"))
    assert len(bundles) == 1
    path = bundles[0].path
    forward = t.span("forward")
    assert forward.status.status_code is StatusCode.ERROR
    events = {e.name: e for e in forward.events}
    assert set(events) == {"memspan.oom", "exception"}
    oom = events["memspan.oom"].attributes or {}
    assert oom[names.OOM_KIND] == "device_oom"
    assert oom[names.OOM_REASON] == "torch.OutOfMemoryError"
    assert oom[names.OOM_DUMP_PATH] == path and oom[names.FILE_PATH] == path
    assert oom[names.OOM_REQUESTED_BYTES] == 2 << 30
    assert oom[names.OOM_DEVICE] == "cuda:0"
    assert oom[names.OOM_DEVICE_FREE_BYTES] == int(1.44 * (1 << 30))
    assert (forward.attributes or {})[names.OOM_DUMP_PATH] == path
    for outer in ("step", "train"):
        span = t.span(outer)
        assert [e.name for e in span.events] == ["exception"]
        assert names.OOM_DUMP_PATH not in (span.attributes or {})
    # the non-phase span around the phases gets the event too
    request = t.span("POST /generate")
    assert "memspan.oom" in [e.name for e in request.events]
    assert (request.attributes or {})[names.OOM_DUMP_PATH] == path
    manifest = json.loads(Path(path, "manifest.json").read_text())
    assert manifest["trace_id"] == f"{forward.context.trace_id:032x}"
    assert manifest["span_id"] == f"{forward.context.span_id:016x}"
    assert manifest["phase_path"] == "train / step / forward"
    assert manifest["kind"] == "device_oom"
    phases = json.loads(Path(path, "phases.json").read_text())
    assert [p["name"] for p in phases] == ["train", "step", "forward"]
    events_text = Path(path, "events.jsonl").read_text()
    assert '"path":"train / step / forward"' in events_text
    # by kind only (the path is in the event and the bundle); every kind exists from zero
    assert oom_count(t) == {((names.OOM_KIND, kind),): int(kind == "device_oom")
                            for kind in ("device_oom", "host_oom", "possible_oom",
                                         "oom_killed", "unknown")}


def test_non_oom_errors_write_nothing(oom_telemetry: Telemetry, tmp_path: Path) -> None:
    with pytest.raises(ValueError), oom_telemetry.tracker.phase("p"):
        raise ValueError("out of memory guard disabled")
    assert not (tmp_path / "dumps").exists()
    assert set(oom_count(oom_telemetry).values()) == {0}


def test_dump_failure_is_on_the_event_and_the_error_still_propagates(
    telemetry_factory, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    t = telemetry_factory(config=MemspanConfig(dump_dir=str(blocker / "dumps")))
    error = MemoryError()
    with pytest.raises(MemoryError) as raised, t.tracker.phase("load"):
        raise error
    assert raised.value is error
    (event,) = [e for e in t.span("load").events if e.name == "memspan.oom"]
    attributes = event.attributes or {}
    assert "memspan.oom.dump.error" in attributes
    assert names.OOM_DUMP_PATH not in attributes
    assert attributes[names.OOM_KIND] == "host_oom"


def test_capture_oom_outside_phases(oom_telemetry: Telemetry, tmp_path: Path) -> None:
    from memspan.oom.service import capture_oom_block

    tracer = oom_telemetry.tracer_provider.get_tracer("app")
    error = MemoryError("cache")
    with pytest.raises(MemoryError) as raised, tracer.start_as_current_span("handler"), \
            capture_oom_block(oom_telemetry.tracker.flight_recorder, "warmup", {"k": 1}):
        raise error
    assert raised.value is error
    (bundle,) = list_bundles(str(tmp_path / "dumps"))
    metadata = json.loads(Path(bundle.path, "metadata.json").read_text())
    assert metadata["context"] == "warmup" and metadata["user_metadata"] == {"k": 1}
    handler = oom_telemetry.span("handler")
    assert [e.name for e in handler.events] == ["memspan.oom", "exception"]
    assert (handler.attributes or {})[names.OOM_DUMP_PATH] == bundle.path


def test_allocator_observer_figures_are_exact_and_debounced(
    telemetry_factory, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    callbacks: list[Any] = []
    snapshots: list[int] = []

    def fake_snapshot() -> dict[str, Any]:
        snapshots.append(1)
        return {"segments": [], "device_traces": [[]]}

    observer = AllocatorObserver(attach=callbacks.append, snapshot=fake_snapshot)
    api = FakeCudaApi()
    config = MemspanConfig(dump_dir=str(tmp_path / "dumps"), cuda_history=True)
    t = telemetry_factory(config=config, sources=[HostMemorySource(), TorchAllocatorSource(api)],
                          observer=observer)
    with pytest.raises(torch.OutOfMemoryError), t.tracker.phase("forward"):
        assert observer.attached and len(callbacks) == 1
        dispatch = callbacks[0]
        for _ in range(3):  # the allocator may call it several times for one OOM
            dispatch(0, 2_147_483_648, 80_000_000_000, 1_234_567)
        raise torch.OutOfMemoryError(CUDA_OOM)
    assert observer.calls == 3 and len(snapshots) == 1
    (event,) = [e for e in t.span("forward").events if e.name == "memspan.oom"]
    attributes = event.attributes or {}
    assert attributes[names.OOM_REQUESTED_BYTES] == 2_147_483_648
    assert attributes[names.OOM_DEVICE_FREE_BYTES] == 1_234_567
    path = str(attributes[names.OOM_DUMP_PATH])
    import pickle

    assert pickle.loads(Path(path, "cuda_snapshot.pickle").read_bytes())["segments"] == []
    metadata = json.loads(Path(path, "metadata.json").read_text())
    assert metadata["observer"]["device_free_bytes"] == 1_234_567


def test_observer_never_raises_into_the_allocator() -> None:
    def broken_snapshot() -> Any:
        raise RuntimeError("snapshot failed")

    callbacks: list[Any] = []
    observer = AllocatorObserver(attach=callbacks.append, snapshot=broken_snapshot)
    observer.capture_history = True
    observer.add_listener(lambda observed: 1 / 0)
    assert observer.ensure_attached()
    callbacks[0](0, 1, 2, 3)
    callbacks[0]("not", "numbers", None, object())
    assert observer.latest is not None and observer.latest.requested_bytes == 1


def test_breadcrumbs_follow_phases_and_vanish_on_clean_shutdown(
    telemetry_factory, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    t = telemetry_factory(config=MemspanConfig(dump_dir=str(tmp_path), breadcrumbs=True))
    writer = t.tracker.flight_recorder.breadcrumbs
    assert writer is not None
    writer.min_interval_s = 0.0
    with t.tracker.phase("train"), t.tracker.phase("step"):
        pass
    t.tracker.flush()  # phase ends reach the ring (and the breadcrumb) from the export worker
    lines = [json.loads(line) for line in Path(writer.path).read_text().splitlines()]
    assert lines[0]["type"] == "breadcrumb_header" and lines[0]["pid"] == os.getpid()
    assert [e["path"] for e in lines[1:] if e["type"] == "phase_end"] == ["train / step", "train"]
    writer.max_bytes = 2000
    for _ in range(200):
        with t.tracker.phase("loop"):
            pass
    assert os.path.getsize(writer.path) <= 2000
    t.tracker.shutdown()
    assert not os.path.exists(writer.path)


def run_script(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python(script, cwd, env=clean_env(**env))


def test_real_memory_error_under_rlimit_as_is_a_host_oom(tmp_path: Path) -> None:
    result = run_script("""
        import resource, memspan
        memspan.configure(dump_dir="dumps", export_interval_s=60)
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, hard))
        try:
            with memspan.phase("load"):
                blob = bytearray(8 << 30)
        except MemoryError as error:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
            print("caught", type(error).__name__)
        memspan.shutdown()
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "caught MemoryError" in result.stdout
    (bundle,) = list_bundles(str(tmp_path / "dumps"))
    manifest = json.loads(Path(bundle.path, "manifest.json").read_text())
    assert manifest["kind"] == "host_oom" and manifest["reason"] == "MemoryError"
    assert manifest["phase_path"] == "load"


def test_real_torch_cpu_allocator_error_is_a_host_oom(tmp_path: Path) -> None:
    result = run_script("""
        import torch, memspan
        memspan.configure(dump_dir="dumps", export_interval_s=60)
        try:
            with memspan.phase("alloc"):
                torch.empty(10**14, dtype=torch.uint8)
        except RuntimeError as error:
            print("caught", "DefaultCPUAllocator" in str(error))
        memspan.shutdown()
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "caught True" in result.stdout
    (bundle,) = list_bundles(str(tmp_path / "dumps"))
    manifest = json.loads(Path(bundle.path, "manifest.json").read_text())
    assert manifest["kind"] == "host_oom"
    assert manifest["reason"] == "message_pattern:DefaultCPUAllocator"


def test_uncaught_oom_outside_phases_is_dumped_by_the_excepthook(tmp_path: Path) -> None:
    result = run_script("""
        import threading, memspan
        memspan.configure(dump_dir="dumps", export_interval_s=60)
        def worker():
            raise MemoryError("in a thread")
        thread = threading.Thread(target=worker, name="loader")
        thread.start(); thread.join()
        raise MemoryError("at top level")
    """, tmp_path)
    assert result.returncode == 1
    assert "MemoryError: at top level" in result.stderr  # the previous hook still prints it
    assert "MemoryError: in a thread" in result.stderr
    bundles = list_bundles(str(tmp_path / "dumps"))
    contexts = sorted(json.loads(Path(b.path, "metadata.json").read_text())["context"]
                      for b in bundles)
    assert contexts == ["uncaught exception", "uncaught exception in thread loader"]


def test_excepthooks_are_restored_on_shutdown(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    import threading

    before = (sys.excepthook, threading.excepthook)
    t = telemetry_factory(install_excepthooks=True)
    assert sys.excepthook != before[0]
    t.tracker.shutdown()
    assert (sys.excepthook, threading.excepthook) == before


def test_sigkill_leaves_a_breadcrumb(tmp_path: Path) -> None:
    script = textwrap.dedent("""
        import os, signal, time, memspan
        memspan.configure(dump_dir="dumps", breadcrumbs=True, sample_interval_s=0.02,
                          export_interval_s=60)
        with memspan.phase("train"):
            with memspan.phase("step"):
                time.sleep(0.5)
                os.kill(os.getpid(), signal.SIGKILL)
    """)
    process = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, timeout=60,
                             capture_output=True, text=True, check=False)
    assert process.returncode == -9
    crumbs = sorted((tmp_path / "dumps" / ".breadcrumbs").iterdir())
    assert [p.suffix for p in crumbs] == [".jsonl", ".stack"]  # the history and the open stack
    assert crumbs[0].stem == crumbs[1].stem
    text = crumbs[0].read_text()
    assert '"path":"train / step"' in text and '"type":"sample"' in text
    stack = parse_open_stack(crumbs[1].read_bytes())
    assert stack.valid and stack.bad_slots == 0
    assert sorted(record["path"] for record in stack.open) == ["train", "train / step"]


def test_a_forked_child_never_writes_the_parents_breadcrumbs(telemetry_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    t = telemetry_factory(config=MemspanConfig(dump_dir=str(tmp_path), breadcrumbs=True))
    writer = t.tracker.flight_recorder.breadcrumbs
    assert writer is not None
    writer.min_interval_s = 0.0
    with t.tracker.phase("parent"):
        pass
    # the parent's export worker hands the phase end to the ring; deliver it now and put the
    # ring on disk, so nothing of the parent's is still on its way when the child runs
    t.tracker.flush()
    writer.flush(force=True)
    before = Path(writer.path).read_text()
    assert '"type":"phase_end","path":"parent"' in before
    stack_file = Path(writer.path).with_suffix(".stack")
    stack_before = stack_file.read_bytes()
    pid = os.fork()
    if pid == 0:
        try:
            with t.tracker.phase("child-work"):
                pass
            writer.flush(force=True)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert Path(writer.path).read_text() == before
    assert stack_file.read_bytes() == stack_before  # nor the parent's mapped stack file
    assert sorted(p.name for p in (tmp_path / ".breadcrumbs").iterdir()) == sorted(
        [Path(writer.path).name, stack_file.name])


def test_phase_end_ring_events_stay_within_their_declared_size(telemetry: Telemetry) -> None:
    from memspan.oom.service import _PHASE_EVENT_BYTES

    tracker = telemetry.tracker
    try:
        with tracker.phase("a" * 300), tracker.phase("step"):
            raise KeyboardInterrupt("an error name on the event")
    except KeyboardInterrupt:
        pass
    tracker.flush()
    events = [e for e in tracker.flight_recorder.recorder.ring.snapshot()
              if e.get("type") == "phase_end"]
    assert len(events) == 2
    for event in events:
        payload = {k: v for k, v in event.items() if k not in ("seq", "ts")}
        bound = (_PHASE_EVENT_BYTES + len(event["path"]) + len(event["scope_id"])
                 + len(event.get("error", "")))
        assert len(json.dumps(payload, separators=(",", ":"))) <= bound


def test_phase_end_events_carry_when_the_phase_ended_not_when_the_worker_saw_it(
        telemetry: Telemetry) -> None:
    """Three steps 50 ms apart, all handed to the ring in one batch: each ``phase_end``
    event's ``ts`` is its own phase's end (what ``memspan dumps show`` draws offsets from)."""
    tracker = telemetry.tracker
    ends = []
    for step in range(3):
        with tracker.phase("step", {"step": step}):
            pass
        ends.append(time.time())
        time.sleep(0.05)
    tracker.flush()
    events = [e for e in tracker.flight_recorder.recorder.ring.snapshot()
              if e.get("type") == "phase_end"]
    assert len(events) == 3
    for event, ended_by in zip(events, ends, strict=True):
        assert event["ts"] == pytest.approx(event["end"], abs=1e-6)
        assert ended_by - 0.01 <= event["ts"] <= ended_by
    gaps = [b["ts"] - a["ts"] for a, b in itertools.pairwise(events)]
    assert all(gap >= 0.045 for gap in gaps), gaps
