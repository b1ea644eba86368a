"""The embedded default as a user meets it: where it says telemetry goes, what the first export
holds, what one huge span costs, and where files land after os.chdir.

Each case runs ``memspan.configure()`` in a real subprocess (global providers are set once per
process) and reads the files it wrote.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
import textwrap
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.json.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import TracerProvider

from launcher_helpers import clean_env, run_instrumented, run_python
from memspan import names
from memspan.drops import OUTPUT_ROTATED, OUTPUT_SPAN_OVERSIZED, DropLedger
from memspan.export.bounded_file import BoundedLineFile
from memspan.export.embedded import SpanLinesExporter


def run(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python(script, cwd, env=clean_env(**env))


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def span_names(path: Path) -> list[str]:
    return [span["name"] for record in records(path) for rs in record["resourceSpans"]
            for ss in rs["scopeSpans"] for span in ss["spans"]]


def points(record: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [p for rm in record["resourceMetrics"] for sm in rm["scopeMetrics"]
            for m in sm["metrics"] if m["name"] == name for p in m["sum"]["dataPoints"]]


ONE_HUGE_PHASE = """
    import memspan
    memspan.configure(output_max_mb=1, export_interval_s=60)
    for i in range(100):
        with memspan.phase("normal", i=i):
            pass
    with memspan.phase("huge", blob="x" * (2 << 20)):
        pass
    memspan.shutdown(timeout_s=10)
"""


def test_one_huge_attribute_is_cut_and_no_span_is_lost(tmp_path: Path) -> None:
    result = run(ONE_HUGE_PHASE, tmp_path)
    assert result.returncode == 0, result.stderr
    traces = tmp_path / "memspan-out" / "traces.jsonl"
    assert sorted(span_names(traces)) == ["huge"] + ["normal"] * 100
    huge = next(span for record in records(traces) for rs in record["resourceSpans"]
                for ss in rs["scopeSpans"] for span in ss["spans"] if span["name"] == "huge")
    blob = next(a["value"]["stringValue"] for a in huge["attributes"] if a["key"] == "blob")
    assert blob == "x" * 16384  # memspan's default OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT


def test_one_oversized_span_is_dropped_alone_and_counted(tmp_path: Path) -> None:
    # With the length limit lifted, the huge span cannot fit the 1 MiB bound: it alone goes.
    result = run(ONE_HUGE_PHASE + """
    from memspan.drops import PROCESS_LEDGER
    print(PROCESS_LEDGER.snapshot())
    """, tmp_path, OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT=str(4 << 20))
    assert result.returncode == 0, result.stderr
    assert span_names(tmp_path / "memspan-out" / "traces.jsonl") == ["normal"] * 100
    assert f"'{OUTPUT_SPAN_OVERSIZED}': 1" in result.stdout
    assert "was dropped (the other spans of its batch were kept)" in result.stderr


def test_a_batch_too_big_for_one_line_is_split(tmp_path: Path) -> None:
    ledger = DropLedger()
    stream = BoundedLineFile(str(tmp_path / "traces.jsonl"), max_bytes=16_000, ledger=ledger)
    exporter = SpanLinesExporter(stream, ledger)
    tracer = TracerProvider(shutdown_on_exit=False).get_tracer("t")
    spans = []
    for i in range(16):
        span = tracer.start_span(f"s{i}", attributes={"pad": "p" * 100})
        span.end()
        spans.append(span)
    big = tracer.start_span("big", attributes={"pad": "b" * 20_000})
    big.end()
    exporter.export([*spans[:8], big, *spans[8:]])  # type: ignore[arg-type]
    stream.close()
    assert not (tmp_path / "traces.jsonl.1").exists()
    assert sorted(span_names(tmp_path / "traces.jsonl")) == sorted(f"s{i}" for i in range(16))
    assert ledger.snapshot().get(OUTPUT_SPAN_OVERSIZED) == 1
    exporter.shutdown()
    exporter.shutdown()  # twice, silently


def test_first_export_has_the_alert_counters_at_zero(tmp_path: Path) -> None:
    result = run("""
        import time, memspan
        memspan.configure(export_interval_s=0.2)
        with memspan.phase("p"):
            time.sleep(0.6)
        memspan.shutdown(timeout_s=10)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    first = records(tmp_path / "memspan-out" / "metrics.jsonl")[0]
    from memspan.drops import REASONS
    expected = {names.OOM_COUNT: (names.OOM_KIND, {"device_oom", "host_oom", "possible_oom",
                                                    "oom_killed", "unknown"}),
                names.RECORDER_DROPPED: (names.DROP_REASON, set(REASONS))}
    for name, (label, values) in expected.items():
        # one series per value known at start-up, each at zero: increase() sees the first event
        seen = {(a["key"], a["value"]["stringValue"]): p.get("asInt", "0")
                for p in points(first, name) for a in p.get("attributes", [])}
        assert seen == {(label, value): "0" for value in values}, name
        assert all(len(p.get("attributes", [])) == 1 for p in points(first, name)), name


def test_start_up_line_says_where_telemetry_goes(tmp_path: Path) -> None:
    script = """
        import memspan
        memspan.configure(dump_dir="bundles")
        memspan.shutdown()
    """
    result = run(script, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("memspan:")]
    assert lines == [f"memspan: telemetry -> files in {tmp_path / 'memspan-out'} (traces.jsonl, "
                     f"metrics.jsonl); OOM bundles -> {tmp_path / 'bundles'}; "
                     "MEMSPAN_QUIET=true hides this line"]
    quiet = run(script, tmp_path, MEMSPAN_QUIET="true")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_start_up_line_names_the_otlp_endpoint(tmp_path: Path) -> None:
    result = run("""
        import memspan
        memspan.configure()
        memspan.shutdown(timeout_s=1)
    """, tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:9", OTEL_METRICS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf")
    assert result.returncode == 0, result.stderr
    assert ("memspan: telemetry -> spans: OTLPSpanExporter -> http://127.0.0.1:9/v1/traces; "
            "OOM bundles -> ") in result.stderr


def test_instrumented_without_an_exporter_says_nothing_is_sent(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("import memspan\nwith memspan.phase('p'):\n    pass\nprint('ran')\n")
    result = run_instrumented(script, tmp_path, env=clean_env(
        OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none", OTEL_LOGS_EXPORTER="none"))
    assert result.returncode == 0, result.stderr
    assert "ran" in result.stdout
    assert "memspan: telemetry goes NOWHERE: the installed OpenTelemetry providers have no " \
           "exporter" in result.stderr


def test_a_directory_variable_naming_a_file_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("x")
    result = run("import memspan; memspan.configure()", tmp_path, MEMSPAN_OUTPUT_DIR="a-file")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "memspan.ConfigError: MEMSPAN_OUTPUT_DIR='a-file' exists and is "
        "not a directory; accepted: a directory path, not an existing file")


def test_relative_directories_do_not_move_after_chdir(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    result = run("""
        import os, memspan
        memspan.configure(dump_dir="dumps", output_dir="out", export_interval_s=60)
        os.chdir("elsewhere")
        try:
            with memspan.phase("load"):
                raise MemoryError("simulated")
        except MemoryError:
            pass
        memspan.shutdown(timeout_s=10)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert len([p for p in (tmp_path / "dumps").iterdir() if not p.name.startswith(".")]) == 1
    assert span_names(tmp_path / "out" / "traces.jsonl") == ["load"]
    assert sorted(os.listdir(tmp_path / "elsewhere")) == []


def test_output_is_private(tmp_path: Path) -> None:
    result = run("import memspan; memspan.configure(); memspan.shutdown()", tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "memspan-out"
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("traces.jsonl", "metrics.jsonl"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600


@settings(max_examples=40, deadline=None)
@given(pads=st.lists(st.integers(min_value=0, max_value=6000), min_size=1, max_size=24))
def test_span_lines_keep_every_span_that_fits_and_count_the_rest(pads: list[int]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        ledger = DropLedger()
        path = Path(directory, "traces.jsonl")
        stream = BoundedLineFile(str(path), max_bytes=1 << 20, ledger=ledger)
        exporter = SpanLinesExporter(stream, ledger)
        tracer = TracerProvider(shutdown_on_exit=False).get_tracer("fuzz")
        spans = []
        for i, pad in enumerate(pads):
            span = tracer.start_span(f"s{i}", attributes={"pad": "p" * pad})
            span.end()
            spans.append(span)
        stream.max_bytes = 5000  # spans with pads above ~4.5 KB cannot fit alone
        exporter.export(spans)  # type: ignore[arg-type]
        stream.close()
        files = [p for p in (Path(directory, "traces.jsonl.1"), path) if p.exists()]
        written = []
        for file in files:
            data = file.read_bytes()
            assert data == b"" or data.endswith(b"\n")
            assert all(len(line) + 1 <= 5000 for line in data.splitlines())
            written += span_names(file) if data else []
        single = {f"s{i}": len(exporter_line([span])) for i, span in enumerate(spans)}
        fitting = sorted(n for n, size in single.items() if size <= 5000)
        if ledger.count(OUTPUT_ROTATED) == 0:  # nothing pushed out by rotation: all are there
            assert sorted(written) == fitting
        else:
            assert set(written) <= set(fitting)
        assert ledger.count(OUTPUT_SPAN_OVERSIZED) == sum(size > 5000 for size in single.values())


def exporter_line(spans: list[Any]) -> bytes:
    encoded = encode_spans(spans)
    return (json.dumps(encoded.to_dict(), separators=(",", ":")) + "\n").encode()


def test_spawned_workers_do_not_repeat_the_start_up_line(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing
        def square(x):
            return x * x
        if __name__ == "__main__":
            with multiprocessing.get_context("spawn").Pool(2) as pool:
                print(sum(pool.map(square, range(4))))
    """))
    result = run_instrumented(script, tmp_path, env=clean_env(
        OTEL_TRACES_EXPORTER="memspan_file", OTEL_METRICS_EXPORTER="memspan_file",
        OTEL_LOGS_EXPORTER="none"))
    assert result.returncode == 0, result.stderr
    assert "14" in result.stdout
    assert result.stderr.count("memspan: telemetry -> ") == 1, result.stderr
