"""The collector is down: the job runs to completion, shutdown keeps its deadline, memory
stays flat and the drops are counted."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

WORKLOAD = textwrap.dedent("""
    import json, sys, time
    import memspan
    from memspan.sources.host import HostMemorySource

    tracker = memspan.configure(service_name="exporter-down")
    host = HostMemorySource()
    started = time.monotonic()
    marks = {}
    phases = 0
    while time.monotonic() - started < float(sys.argv[1]):
        with memspan.phase("train"):
            for _ in range(50):
                with memspan.phase("step"):
                    phases += 1
        elapsed = time.monotonic() - started
        for mark in (10, 20):
            if elapsed >= mark and mark not in marks:
                marks[mark] = (phases, host.rss_bytes())
    end_rss = host.rss_bytes()
    drops = tracker.ledger.snapshot()
    t0 = time.monotonic()
    finished = memspan.shutdown(timeout_s=5.0)
    print(json.dumps({"marks": marks, "phases": phases, "end_rss": end_rss, "drops": drops,
                      "shutdown_s": time.monotonic() - t0, "finished": finished}))
""")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the with-block ends


def test_workload_with_the_exporter_down(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MEMSPAN_"))}
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_METRIC_EXPORT_INTERVAL": "2000",
                "OTEL_BSP_MAX_QUEUE_SIZE": "2048"})
    result = subprocess.run([sys.executable, "-c", WORKLOAD, "30"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    (phases_10, rss_10), (phases_20, _) = report["marks"]["10"], report["marks"]["20"]
    assert report["phases"] > phases_20 > phases_10 > 1000
    # more phases after the 10 s mark, yet no growth: the export queue is bounded
    assert report["end_rss"] - rss_10 < 16 * 2**20, report
    assert report["drops"].get("export_queue_full", 0) > 0
    assert report["shutdown_s"] < 5.0 + 1.0
    assert not (tmp_path / "memspan-out").exists()  # the user's exporter was used, not ours
