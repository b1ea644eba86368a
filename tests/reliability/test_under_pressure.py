"""Issue 23: under pressure the evidence is written, deadlines hold, nothing is lost or
miscounted. Every case runs the real mechanism in a real subprocess: a real ``RLIMIT_AS``
filled by referenced blocks, a real slow exporter behind ``SimpleSpanProcessor``, real
processes rotating the same files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from launcher_helpers import run_python

FILL_ADDRESS_SPACE = textwrap.dedent("""
    import json, os, resource, sys
    import memspan
    memspan.configure(output_dir="out", dump_dir="dumps", export_interval_s=60, quiet=True)
    for i in range(3000):  # a ring with history in it
        with memspan.phase("warm", i=i):
            pass
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + (192 << 20), resource.RLIM_INFINITY))
    blocks = []
    try:
        with memspan.phase("fill"):
            while True:
                blocks.append(bytearray(4096))  # small blocks, all still referenced
    except MemoryError:
        pass
    # memory is still exhausted here: the bundle had to be written without fresh memory
    found = [n for n in os.listdir("dumps") if not n.startswith(".")] if os.path.isdir(
        "dumps") else []
    print(json.dumps({"bundles": found, "blocks": len(blocks)}), flush=True)
    os._exit(0)
""")


def test_the_oom_bundle_is_written_when_the_address_space_is_really_exhausted(
        tmp_path: Path) -> None:
    result = run_python(FILL_ADDRESS_SPACE, tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["blocks"] > 10_000  # the limit was really reached by the blocks
    assert "could not be written" not in result.stderr, result.stderr[-2000:]
    assert len(report["bundles"]) == 1, result.stderr[-2000:]
    bundle = tmp_path / "dumps" / report["bundles"][0]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["kind"] == "host_oom" and manifest["phase_path"] == "fill"
    for name in manifest["files"]:  # complete: every file it lists is there
        assert (bundle / name).is_file(), name
    assert manifest["event_count"] > 100 and not manifest["events_truncated"]
    assert "MemoryError" in (bundle / "traceback.txt").read_text()


SLOW_SIMPLE_PROCESSOR = textwrap.dedent("""
    import json, sys, time
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor, SpanExporter, SpanExportResult)
    import memspan
    from memspan.drops import EXPORT_DEADLINE, PROCESS_LEDGER

    class OneSecondASpan(SpanExporter):
        delivered = 0
        def export(self, spans):
            time.sleep(1.0)
            OneSecondASpan.delivered += len(spans)
            return SpanExportResult.SUCCESS

    memspan.configure(output_dir="out", export_interval_s=60, quiet=True)
    ended = 0
    for i in range(20000):  # a backlog for the export worker
        with memspan.phase("step"):
            ended += 1
    trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(OneSecondASpan()))
    # the phases still waiting for the worker go to the slow processor too
    started = time.monotonic()
    if sys.argv[1] == "shutdown":
        finished = memspan.shutdown(3)
        print(json.dumps({"finished": finished, "seconds": time.monotonic() - started,
                          "delivered": OneSecondASpan.delivered,
                          "dropped": PROCESS_LEDGER.count(EXPORT_DEADLINE)}), flush=True)
    else:
        print(time.time(), flush=True)  # then the exit handler runs
""")


def test_shutdown_holds_its_deadline_behind_a_slow_simple_span_processor(
        tmp_path: Path) -> None:
    result = run_python(SLOW_SIMPLE_PROCESSOR, tmp_path, "shutdown", timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["seconds"] < 3.6, report
    assert report["finished"] is False  # it says so: not everything was delivered
    assert report["dropped"] > 0  # ...and counts what was not
    assert "export_deadline" in result.stderr


def test_the_exit_handler_holds_its_deadline_behind_a_slow_simple_span_processor(
        tmp_path: Path) -> None:
    process = subprocess.Popen([sys.executable, "-c", SLOW_SIMPLE_PROCESSOR, "exit"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    out, err = process.communicate(timeout=60)
    ended = time.time()
    assert process.returncode == 0, err[-3000:]
    last_statement = float(out.strip().splitlines()[-1])
    assert ended - last_statement < 5.0 + 1.0, err[-2000:]  # EXIT_DEADLINE_S, and a margin
    assert "Traceback" not in err


EXIT_UNDER_PRESSURE = textwrap.dedent("""
    import os, resource, sys, threading
    import memspan
    memspan.configure(output_dir="out", dump_dir="dumps", export_interval_s=60, quiet=True)
    with open("/proc/self/statm") as statm:
        size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (size + (128 << 20), resource.RLIM_INFINITY))
    blocks = []
    def fill():
        try:
            while True:
                blocks.append(bytearray(4096))
        except MemoryError:
            pass
    if sys.argv[1] == "reserve spent":  # an OOM in a phase used the reserve up first
        try:
            with memspan.phase("fill"):
                fill()
                raise MemoryError
        except MemoryError:
            pass
    fill()
    threading.stack_size(256 << 20)  # the program's threads recurse deeply
    for _ in range(1000):
        blocks.pop()  # a little back to malloc, nothing to the kernel
    try:
        threading.Thread(target=lambda: None).start()
        print("a thread started", flush=True)
    except RuntimeError as error:
        print("no thread:", error, flush=True)
    for i in range(5):
        with memspan.phase("after_pressure"):
            pass
    # the host OOM is still in force when the exit handler runs
""")


@pytest.mark.parametrize("case", ["reserve held", "reserve spent"])
def test_exit_under_memory_pressure_flushes_inline_without_a_traceback(
        tmp_path: Path, case: str) -> None:
    result = run_python(EXIT_UNDER_PRESSURE, tmp_path, case, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no thread: can't start new thread" in result.stdout  # the real condition
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "final export at exit failed" not in result.stderr, result.stderr[-2000:]
    metrics = (tmp_path / "out" / "metrics.jsonl").read_text()
    assert "after_pressure" in metrics  # the last metrics were exported at exit


CONFIGURE = textwrap.dedent("""
    import threading
    import memspan
    try:
        memspan.configure(output_dir="out")
    except memspan.ConfigError as error:
        print("ConfigError:", error)
    else:
        with memspan.phase("p"):
            pass
        print("threads:", sorted(t.name for t in threading.enumerate()))
""")


def test_otel_sdk_disabled_says_so_and_starts_no_thread(tmp_path: Path) -> None:
    result = run_python(CONFIGURE, tmp_path, env={"OTEL_SDK_DISABLED": "true"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert "telemetry is off (OTEL_SDK_DISABLED=true)" in result.stderr
    assert "telemetry ->" not in result.stderr
    assert "threads: ['MainThread']" in result.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("variable, value", [
    ("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url"),
    ("OTEL_METRIC_EXPORT_INTERVAL", "-1"),
])
def test_a_bad_otel_variable_is_a_config_error_naming_it(tmp_path: Path, variable: str,
                                                          value: str) -> None:
    started = time.monotonic()
    result = run_python(CONFIGURE, tmp_path, env={variable: value})
    assert time.monotonic() - started < 5.0  # no DNS retries at exit
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"ConfigError: {variable}=" in result.stdout
    assert "Traceback" not in result.stderr


def test_memspan_run_ignores_a_bad_metric_interval_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text("import memspan\nwith memspan.phase('work'):\n    pass\n")
    result = subprocess.run([sys.executable, "-m", "memspan", "run", "--", sys.executable,
                             "job.py"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OTEL_METRIC_EXPORT_INTERVAL": "-1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert result.stderr.count("OTEL_METRIC_EXPORT_INTERVAL=-1") == 1
    assert "work" in (tmp_path / "memspan-out" / "metrics.jsonl").read_text()


RENAME_AND_BAD_VALUES = textwrap.dedent("""
    import json, sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    import memspan
    from memspan.drops import ATTRIBUTE_NONE, ATTRIBUTE_TRUNCATED, PROCESS_LEDGER
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(exporter))
    memspan.configure(tracer_provider=provider, quiet=True)
    with memspan.phase("load", batch=None, ids=list(range(100_000))):
        trace.get_current_span().update_name("load batch 7")
    memspan.shutdown()
    span = exporter.get_finished_spans()[0]
    print(json.dumps({"name": span.name, "phase": span.attributes["memspan.phase.name"],
                      "keys": sorted(span.attributes), "ids": len(span.attributes["ids"]),
                      "none": PROCESS_LEDGER.count(ATTRIBUTE_NONE),
                      "cut": PROCESS_LEDGER.count(ATTRIBUTE_TRUNCATED)}))
""")


@pytest.mark.parametrize("mode", ["deferred", "sync", "sdk"])
def test_update_name_is_honoured_and_bad_values_are_bounded(tmp_path: Path, mode: str) -> None:
    result = run_python(RENAME_AND_BAD_VALUES, tmp_path, env={"MEMSPAN_SPAN_MODE": mode})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["name"] == "load batch 7" and report["phase"] == "load"
    assert "batch" not in report["keys"]  # None is left out, never the text "None"
    assert report["none"] == 1
    assert report["ids"] == 1024 and report["cut"] == 1


ROTATE = textwrap.dedent("""
    import sys
    from memspan.drops import DropLedger
    from memspan.export.bounded_file import BoundedLineFile
    ledger = DropLedger()
    out = BoundedLineFile("memspan-out/traces.jsonl", 4096, ledger)
    for i in range(3000):
        out.write('{"writer": "%s", "i": %d, "pad": "%s"}\\n' % (sys.argv[1], i, "x" * 60))
    print(ledger.snapshot().get("output_write_failed", 0))
""")


def test_three_processes_rotating_the_same_files_drop_nothing_whole(tmp_path: Path) -> None:
    writers = [subprocess.Popen([sys.executable, "-c", ROTATE, tag], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for tag in "abc"]
    results = [(w.communicate(timeout=120), w.returncode) for w in writers]
    for (out, err), code in results:
        assert code == 0, err[-2000:]
        assert out.strip() == "0", err[-2000:]  # no line failed to be written
        assert "No such file or directory" not in err
    directory = tmp_path / "memspan-out"
    on_disk = sum(p.stat().st_size for p in directory.iterdir())
    assert on_disk <= 2 * 4096
    for path in directory.iterdir():  # whole lines only
        for line in path.read_text().splitlines():
            json.loads(line)


STEP_NUMBERS_IN_NAMES = textwrap.dedent("""
    import memspan
    memspan.configure(output_dir="out", export_interval_s=60, quiet=True)
    for i in range(2001):
        with memspan.phase(f"step {i}"):
            pass
    memspan.shutdown()
""")


def test_phase_names_with_step_numbers_warn_once_and_bound_the_series(tmp_path: Path) -> None:
    result = run_python(STEP_NUMBERS_IN_NAMES, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.count("phase names embed a number") == 1
    assert 'memspan.phase("step", step=i)' in result.stderr
    paths = set()
    for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines():
        for rm in json.loads(line)["resourceMetrics"]:
            for sm in rm["scopeMetrics"]:
                for metric in sm["metrics"]:
                    if metric["name"] != "memspan.phase.duration":
                        continue
                    for point in metric["histogram"]["dataPoints"]:
                        for attribute in point["attributes"]:
                            if attribute["key"] == "memspan.phase.path":
                                paths.add(attribute["value"]["stringValue"])
    assert len(paths) <= 21 and "step <n>" in paths  # bounded, and no phase lost from it


def test_output_rotated_counts_the_spans_lost_not_the_lines(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from memspan.drops import OUTPUT_ROTATED, DropLedger
    from memspan.export.bounded_file import BoundedLineFile
    from memspan.export.embedded import SpanLinesExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    for i in range(50):
        tracer.start_span(f"s{i}").end()
    batch = list(memory.get_finished_spans())
    ledger = DropLedger()
    stream = BoundedLineFile(str(tmp_path / "traces.jsonl"), 64 << 10, ledger)
    exporter = SpanLinesExporter(stream, ledger)
    for _ in range(40):  # 40 lines of 50 spans each
        exporter.export(batch)
    kept = 0
    for name in ("traces.jsonl", "traces.jsonl.1"):
        for line in (tmp_path / name).read_text().splitlines():
            record = json.loads(line)
            kept += sum(len(ss["spans"]) for rs in record["resourceSpans"]
                        for ss in rs["scopeSpans"])
    assert ledger.count(OUTPUT_ROTATED) > 0
    assert ledger.count(OUTPUT_ROTATED) + kept == 40 * 50  # every span lost is counted
