"""Flight-recorder costs: record_event, dump latency and size at 10,000 events, retention
time with 1,000 bundles present.

Targets: record_event < 2 µs. Stormlog, for comparison: 0.14 s and 7.4 MB per dump with a
full 10,000-event buffer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from _table import Row, report

from memspan import OOMFlightRecorder, OOMFlightRecorderConfig
from memspan.oom.retention import prune

STORMLOG_DUMP_S = 0.14
STORMLOG_DUMP_MB = 7.4


def event(i: int) -> dict[str, object]:
    return {"type": "phase_end", "path": "train / step / forward", "scope_id": f"s:{i}",
            "rss": 1_234_567_890 + i, "allocated": 9_876_543_210, "duration_s": 0.0123}


def main() -> None:
    workdir = tempfile.mkdtemp(prefix="memspan-bench-")
    try:
        recorder = OOMFlightRecorder(OOMFlightRecorderConfig(
            enabled=True, dump_dir=os.path.join(workdir, "dumps"), max_dumps=10_000,
            max_total_mb=100_000))
        events = [event(i) for i in range(100_000)]
        started = time.perf_counter()
        for e in events:
            recorder.record_event(e)
        record_us = (time.perf_counter() - started) / len(events) * 1e6
        timings = []
        path = None
        for _ in range(5):
            started = time.perf_counter()
            path = recorder.dump(reason="MemoryError", exception=MemoryError(), context="bench",
                                 backend="cpu")
            timings.append(time.perf_counter() - started)
        assert path is not None
        size_mb = sum(f.stat().st_size for f in os.scandir(path)) / 1e6
        dump_s = sorted(timings)[len(timings) // 2]
        retention_dir = os.path.join(workdir, "retention")
        os.makedirs(retention_dir)
        for i in range(1000):
            bundle = os.path.join(retention_dir, f"20260101T{i // 3600:02d}{i // 60 % 60:02d}"
                                  f"{i % 60:02d}Z_host_r0_p1_{i}")
            os.mkdir(bundle)
            with open(os.path.join(bundle, "manifest.json"), "w") as handle:
                handle.write("{}" * 100)
        started = time.perf_counter()
        result = prune(retention_dir, max_dumps=5, max_total_bytes=1 << 40)
        retention_s = time.perf_counter() - started
        assert len(result.removed) == 995
        rows = [
            Row("record_event", record_us, "us", "< 2 us", None, record_us < 2.0),
            Row("dump latency, 10k-event ring", dump_s, "s", "Stormlog 0.14 s",
                dump_s / STORMLOG_DUMP_S),
            Row("dump size, 10k-event ring", size_mb, "MB", "Stormlog 7.4 MB",
                size_mb / STORMLOG_DUMP_MB),
            Row("retention pass, 1,000 bundles (995 removed)", retention_s, "s"),
        ]
        report("oom_dump", rows)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
