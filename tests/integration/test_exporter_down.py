"""The collector is down or hung: the job runs to completion, shutdown and exit keep their
deadline, memory stays flat, the drops are counted and a normal exit is quiet."""

from __future__ import annotations

import contextlib
import json
import socket
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher_helpers import clean_env, run_instrumented, run_python

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
    env = clean_env()
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{closed_port()}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                "OTEL_METRIC_EXPORT_INTERVAL": "2000",
                "OTEL_BSP_MAX_QUEUE_SIZE": "2048"})
    result = run_python(WORKLOAD, tmp_path, "30", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    (phases_10, rss_10), (phases_20, _) = report["marks"]["10"], report["marks"]["20"]
    assert report["phases"] > phases_20 > phases_10 > 1000
    # more phases after the 10 s mark, yet no growth: the export queue is bounded
    assert report["end_rss"] - rss_10 < 16 * 2**20, report
    assert report["drops"].get("export_queue_full", 0) > 0
    assert report["shutdown_s"] < 5.0 + 1.0
    assert not (tmp_path / "memspan-out").exists()  # the user's exporter was used, not ours


@contextlib.contextmanager
def silent_collector() -> Iterator[int]:
    """A TCP server that accepts every connection and never answers (a hung collector)."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        for connection in held:
            connection.close()
        server.close()


NO_SHUTDOWN = textwrap.dedent("""
    import memspan
    memspan.configure(service_name="hung-collector")
    for step in range(200):
        with memspan.phase("step", step=step):
            pass
    print("done", flush=True)
""")

# The deadline is 5 s (memspan.bootstrap.EXIT_DEADLINE_S). The exporters may wait 60 s for an
# answer (OTEL_EXPORTER_OTLP_TIMEOUT below), which the SDK's own exit handlers would do. The
# bound is a hang guard with a wide margin between the two, not a timing measurement.
EXIT_GUARD_S = 30.0
NOISE = ("Exporter already shutdown", "shutdown can only be called once",
         "Processor is already shutdown")


def hung_env(port: int, protocol: str) -> dict[str, str]:
    env = clean_env()
    env.update({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_LOGS_EXPORTER": "none",
                "OTEL_EXPORTER_OTLP_TIMEOUT": "60",
                "OTEL_METRIC_EXPORT_INTERVAL": "500", "OTEL_BSP_SCHEDULE_DELAY": "100"})
    return env


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_exit_is_bounded_with_a_collector_that_never_answers(tmp_path: Path,
                                                             protocol: str) -> None:
    with silent_collector() as port:
        started = time.monotonic()
        result = run_python(NO_SHUTDOWN, tmp_path, env=hung_env(port, protocol))
        took = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done" in result.stdout
    assert took < EXIT_GUARD_S, f"exit took {took:.1f} s"
    assert not [n for n in NOISE if n in result.stderr], result.stderr[-2000:]


def test_exit_is_bounded_under_opentelemetry_instrument(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("import memspan\nfor i in range(50):\n    with memspan.phase('s'):\n"
                      "        pass\nprint('done', flush=True)\n")
    with silent_collector() as port:
        started = time.monotonic()
        result = run_instrumented(script, tmp_path, env=hung_env(port, "http/protobuf"))
        took = time.monotonic() - started
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done" in result.stdout
    assert took < EXIT_GUARD_S, f"exit took {took:.1f} s"
    assert not [n for n in NOISE if n in result.stderr], result.stderr[-2000:]


def test_a_normal_run_prints_no_shutdown_noise(tmp_path: Path) -> None:
    script = "import memspan\nmemspan.configure()\nwith memspan.phase('p'):\n    pass\n"
    for explicit in ("", "memspan.shutdown()\n"):
        result = run_python(script + explicit, tmp_path)
        assert result.returncode == 0, result.stderr
        assert [line for line in result.stderr.splitlines()
                if not line.startswith("memspan: telemetry -> ")] == []
