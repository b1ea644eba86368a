"""configure()/shutdown(): the embedded default, the user's exporters, the user's providers.

Each case runs in a real subprocess: OTel global providers can be set once per process.
"""

from __future__ import annotations

import json
import logging
import subprocess
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from launcher_helpers import clean_env, run_python

WORKLOAD = textwrap.dedent(
    """
    import sys
    import memspan
    tracker = memspan.configure(service_name="bootstrap-test", export_interval_s=60)
    with memspan.phase("train"):
        for step in range(3):
            with memspan.phase("step", step=step):
                data = bytearray(2_000_000)
    assert memspan.shutdown(timeout_s=10)
    """
)


def run(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python(script, cwd, env=clean_env(**env))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def spans_of(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [span for record in records for rs in record["resourceSpans"]
            for ss in rs["scopeSpans"] for span in ss["spans"]]


def metrics_of(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for record in records for rm in record["resourceMetrics"]
            for sm in rm["scopeMetrics"] for m in sm["metrics"]}


def test_embedded_default_writes_otlp_json_lines(tmp_path: Path) -> None:
    result = run(WORKLOAD, tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "memspan-out"
    spans = spans_of(read_jsonl(out / "traces.jsonl"))
    assert sorted(s["name"] for s in spans) == ["step", "step", "step", "train"]
    step = next(s for s in spans if s["name"] == "step")
    keys = {a["key"] for a in step["attributes"]}
    assert {"memspan.phase.path", "memspan.phase.scope_id", "memspan.phase.parent_scope_id",
            "memspan.session.id", "memspan.memory.rss.start", "memspan.memory.rss.peak",
            "memspan.memory.retained", "memspan.memory.peak_exact", "step"} <= keys
    records = read_jsonl(out / "metrics.jsonl")
    metrics = metrics_of(records)
    span_ids = {s["spanId"] for s in spans}
    for name in ("memspan.phase.duration", "memspan.phase.memory.peak"):
        # the first export carries the exemplars (later cumulative exports repeat the counts)
        points = [p for record in records for rm in record["resourceMetrics"]
                  for sm in rm["scopeMetrics"] for m in sm["metrics"] if m["name"] == name
                  for p in m["histogram"]["dataPoints"]]
        exemplar_ids = {e["spanId"] for p in points for e in p.get("exemplars", [])}
        assert exemplar_ids and exemplar_ids <= span_ids
        paths = {a["value"]["stringValue"] for p in points if p.get("exemplars")
                 for a in p["attributes"] if a["key"] == "memspan.phase.path"}
        assert paths == {"train", "train / step"}
    assert "process.memory.usage" in metrics
    resource = read_jsonl(out / "traces.jsonl")[0]["resourceSpans"][0]["resource"]
    resource_attrs = {a["key"]: a["value"] for a in resource["attributes"]}
    assert resource_attrs["service.name"] == {"stringValue": "bootstrap-test"}
    assert "service.instance.id" in resource_attrs


def test_user_configured_exporters_are_used_and_nothing_is_written(tmp_path: Path) -> None:
    result = run(WORKLOAD, tmp_path, OTEL_TRACES_EXPORTER="console", OTEL_METRICS_EXPORTER="none")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "memspan-out").exists()
    assert '"memspan.phase.path": "train / step"' in result.stdout


def test_global_providers_already_set_are_used(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        import memspan
        memspan.configure()
        with memspan.phase("mine"):
            pass
        memspan.shutdown()
        print([s.name for s in exporter.get_finished_spans()])
        """
    )
    result = run(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "['mine']" in result.stdout
    assert not (tmp_path / "memspan-out").exists()


def test_bad_environment_value_is_a_clear_error(tmp_path: Path) -> None:
    result = run(WORKLOAD, tmp_path, MEMSPAN_SAMPLE_INTERVAL="often")
    assert result.returncode != 0
    assert "MEMSPAN_SAMPLE_INTERVAL='often' is not a number" in result.stderr


def test_bad_otel_variables_are_config_errors_naming_them(tmp_path: Path) -> None:
    script = "import memspan\nmemspan.configure()\n"
    cases = {
        "OTEL_EXPORTER_OTLP_TIMEOUT": ("abc", "OTEL_EXPORTER_OTLP_TIMEOUT='abc' is not a number; "
                                       "accepted: a number of seconds in [0.001, 3600]"),
        "OTEL_EXPORTER_OTLP_ENDPOINT": ("http://[::1", "OTEL_EXPORTER_OTLP_ENDPOINT='http://[::1' "
                                        "is not a URL (Invalid IPv6 URL); accepted: an http:// "
                                        "or https:// URL (or host:port for gRPC)"),
    }
    for variable, (value, message) in cases.items():
        env = {variable: value}
        if variable != "OTEL_EXPORTER_OTLP_ENDPOINT":
            env["OTEL_TRACES_EXPORTER"] = "otlp"
        result = run(script, tmp_path, **env)
        assert result.returncode == 1
        assert result.stderr.strip().splitlines()[-1] == (
            f"memspan.ConfigError: {message}")


def test_the_embedded_output_counts_into_the_tracker_ledger(tmp_path: Path) -> None:
    result = run("""
import memspan
from memspan.drops import PROCESS_LEDGER
tracker = memspan.configure(output_max_mb=0.01, export_interval_s=60)
installation = memspan.bootstrap.current_installation()
embedded = installation.providers.embedded
assert tracker.ledger is PROCESS_LEDGER is installation.providers.ledger
embedded.traces.write("x" * 20000 + "\\n")
print(tracker.ledger.snapshot())
memspan.shutdown()
""", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "'output_oversized': 1" in result.stdout


def test_counting_processor_reads_this_sdk_and_warns_once_when_it_cannot(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from memspan.drops import DropLedger
    from memspan.export import counting

    processor = counting.CountingBatchSpanProcessor(InMemorySpanExporter(), DropLedger())
    assert processor.counting  # this SDK still has the queue memspan reads
    processor.shutdown()

    original_init = BatchSpanProcessor.__init__

    def moved_queue(self: BatchSpanProcessor, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self._batch_processor._queue = None  # type: ignore[attr-defined]  # as a future SDK may

    monkeypatch.setattr(BatchSpanProcessor, "__init__", moved_queue)
    monkeypatch.setattr(counting, "_warned", threading.Event())
    with caplog.at_level(logging.WARNING, logger="memspan.export.counting"):
        for _ in range(2):
            blind = counting.CountingBatchSpanProcessor(InMemorySpanExporter(), DropLedger())
            assert not blind.counting
            blind.shutdown()
    assert len(caplog.records) == 1
    assert "not counted in memspan.recorder.dropped" in caplog.records[0].getMessage()


def test_shutdown_flushes_global_providers_it_did_not_install_and_leaves_them_running(
        tmp_path: Path) -> None:
    script = textwrap.dedent("""
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import memspan
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=600_000))
        trace.set_tracer_provider(provider)
        memspan.configure(quiet=True)
        with memspan.phase("work"):
            pass
        memspan.shutdown()
        print("after shutdown:", [s.name for s in exporter.get_finished_spans()])
        with trace.get_tracer("app").start_as_current_span("still-running"):
            pass
        provider.force_flush()
        print("provider alive:", "still-running" in [s.name for s in exporter.get_finished_spans()])
    """)
    result = run_python(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "after shutdown: ['work']" in result.stdout
    assert "provider alive: True" in result.stdout
