"""A real Prometheus (Debian's 2.42) scrapes a memspan workload through the OTel exporter."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from launcher_helpers import clean_env

from .promnames import emitted_prometheus_names

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus is installed by `make test` (scripts/install-test-deps.sh)")

WORKLOAD = textwrap.dedent("""
    import sys, time
    from prometheus_client import start_http_server
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from memspan import MemspanConfig, Tracker

    start_http_server(int(sys.argv[1]), addr="127.0.0.1")
    meter_provider = MeterProvider(resource=Resource.create({"service.name": "prom-test"}),
                                   metric_readers=[PrometheusMetricReader()])
    tracker = Tracker(tracer_provider=TracerProvider(), meter_provider=meter_provider,
                      config=MemspanConfig(dump_dir=sys.argv[2], sample_interval_s=0.05))
    with tracker.phase("train"):
        for step in range(5):
            with tracker.phase("step", step=step, owner=object()):  # stringified: one drop
                bytearray(1 << 20)
    try:
        with tracker.phase("load"):
            raise MemoryError("no room")
    except MemoryError:
        pass
    print("ready", flush=True)
    time.sleep(120)
""")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        body = json.loads(response.read())
    assert body["status"] == "success"
    return list(body["data"]["result"])


def test_prometheus_scrapes_every_host_metric_with_labels(tmp_path: Path) -> None:
    app_port, prom_port = free_port(), free_port()
    workload = subprocess.Popen([sys.executable, "-c", WORKLOAD, str(app_port),
                                 str(tmp_path / "dumps")], stdout=subprocess.PIPE, text=True,
                                env=clean_env())
    config = tmp_path / "prometheus.yml"
    config.write_text(textwrap.dedent(f"""
        global:
          scrape_interval: 1s
        scrape_configs:
          - job_name: memspan
            static_configs:
              - targets: ["127.0.0.1:{app_port}"]
    """))
    prometheus = None
    try:
        assert workload.stdout is not None
        assert workload.stdout.readline().strip() == "ready"
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{prom_port}"
        expected = ["process_memory_usage_bytes", "memspan_process_memory_window_peak_bytes",
                    "memspan_phase_duration_seconds_bucket", "memspan_phase_memory_peak_bytes_bucket",
                    "memspan_phase_memory_peak_bytes_count", "memspan_oom_count_total",
                    "memspan_recorder_dropped_total"]
        if Path("/proc/self/cgroup").exists() and Path("/sys/fs/cgroup").exists():
            expected += ["memspan_cgroup_memory_usage_bytes", "memspan_cgroup_oom_kills_total"]
        results: dict[str, list[dict[str, Any]]] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                results = {name: query(base, name) for name in expected}
            except OSError:
                results = {}
            if results and all(results.values()):
                break
            time.sleep(0.5)
        missing = [name for name in expected if not results.get(name)]
        assert not missing, f"Prometheus has no series for {missing}"
        assert set(expected) <= set(emitted_prometheus_names())  # our translation is right
        paths = {r["metric"].get("memspan_phase_path") for r in results["memspan_phase_memory_peak_bytes_count"]}
        assert paths == {"train", "train / step", "load"}
        devices = {r["metric"].get("memspan_memory_device") for r in results["memspan_phase_memory_peak_bytes_count"]}
        assert devices == {"host"}
        # the zero series made at start-up (so increase() counts the first OOM) and the OOM
        counted = [r for r in results["memspan_oom_count_total"] if float(r["value"][1]) > 0]
        (oom,) = counted
        assert oom["metric"]["memspan_oom_kind"] == "host_oom"
        reasons = {r["metric"]["memspan_reason"] for r in results["memspan_recorder_dropped_total"]}
        assert "attribute_stringified" in reasons
        assert float(results["process_memory_usage_bytes"][0]["value"][1]) > 10 * 2**20
    finally:
        for process in (prometheus, workload):
            if process is not None:
                process.kill()
                process.wait(timeout=30)
