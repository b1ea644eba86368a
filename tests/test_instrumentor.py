"""MemspanInstrumentor in code: explicit providers, and uninstrument() taking everything off;
under a real ``opentelemetry-instrument``, the service name of a job nobody named."""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from torch import nn

import memspan
from launcher_helpers import (
    clean_env,
    metric_services,
    phase_services,
    run_instrumented,
    run_python,
)
from memspan import MemspanConfig, bootstrap, names
from memspan.drops import PROCESS_LEDGER
from memspan.instrumentor import MemspanInstrumentor
from memspan.tracker import default_tracker_if_any


def test_instrument_uses_given_providers_and_uninstrument_removes_everything() -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    original_call = nn.Module.__call__
    hooks = (sys.excepthook,)
    instrumentor = MemspanInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            config=MemspanConfig(sample_interval_s=0.01))
    try:
        tracker = default_tracker_if_any()
        assert tracker is not None and tracker.sampler.running
        assert sys.excepthook != hooks[0]
        nn.Linear(4, 4)(torch.randn(2, 4))
        tracker.sampler.sample_once()
        tracker.flush()
        assert [s.name for s in exporter.get_finished_spans()] == ["forward"]
        assert names.PROCESS_MEMORY_USAGE in {
            m.name for rm in reader.get_metrics_data().resource_metrics  # type: ignore[union-attr]
            for sm in rm.scope_metrics for m in sm.metrics}
    finally:
        instrumentor.uninstrument()
    assert default_tracker_if_any() is None
    assert not tracker.sampler.running
    assert nn.Module.__call__ is original_call
    assert sys.excepthook == hooks[0]
    nn.Linear(4, 4)(torch.randn(2, 4))
    assert len(exporter.get_finished_spans()) == 1  # nothing new after uninstrument
    data = reader.get_metrics_data()
    observable = [m for rm in (data.resource_metrics if data else [])
                  for sm in rm.scope_metrics for m in sm.metrics
                  if m.name == names.PROCESS_MEMORY_USAGE and m.data.data_points]
    assert observable == []  # the callbacks went quiet


def test_a_bad_variable_disables_memspan_without_raising(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("MEMSPAN_BUFFER_SIZE", "lots")
    instrumentor = MemspanInstrumentor()
    original_call = nn.Module.__call__
    with caplog.at_level(logging.ERROR, logger="memspan.instrumentor"):
        instrumentor.instrument(tracer_provider=TracerProvider(), meter_provider=MeterProvider())
    try:
        assert default_tracker_if_any() is None
        assert bootstrap.current_installation() is None
        assert nn.Module.__call__ is original_call  # no auto phases either
        # disabled: every public call is a pass-through that never raises
        with memspan.phase("step", step=1) as scope:
            assert scope.phase_path is None

        @memspan.phase("decorated")
        def work(x: int) -> int:
            return x + 1

        assert work(1) == 2
        memspan.enter_phase("handle").close()
        with pytest.raises(MemoryError), memspan.capture_oom("block"):
            raise MemoryError("the user's own error still propagates")
        assert default_tracker_if_any() is None
        assert [r.getMessage() for r in caplog.records] == [
            "memspan: disabled, the program runs without it: configuration error: MEMSPAN_BUFFER_SIZE='lots' is "
            "not an integer; accepted: an integer in [1, 10000000]"]
    finally:
        instrumentor.uninstrument()


def test_one_installation_and_one_ledger_per_process() -> None:
    tracer_provider, meter_provider = TracerProvider(), MeterProvider()
    instrumentor = MemspanInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            config=MemspanConfig(quiet=True, auto_phases=False))
    try:
        installation = bootstrap.current_installation()
        assert installation is not None
        assert installation.tracker is default_tracker_if_any()
        assert installation.tracker.ledger is PROCESS_LEDGER
        # configure() after the instrumentor returns the same tracker: one record, not two
        assert memspan.configure() is installation.tracker
    finally:
        instrumentor.uninstrument()
    assert bootstrap.current_installation() is None
    assert default_tracker_if_any() is None
    # ...and the other way round: the instrumentor joins the installation configure() made
    tracker = memspan.configure(tracer_provider=tracer_provider, meter_provider=meter_provider,
                                quiet=True)
    instrumentor.instrument(config=MemspanConfig(quiet=True, auto_phases=False))
    try:
        assert default_tracker_if_any() is tracker
        assert bootstrap.current_installation() is not None
        assert bootstrap.current_installation().tracker is tracker  # type: ignore[union-attr]
    finally:
        instrumentor.uninstrument()
    assert default_tracker_if_any() is None


def test_uninstrument_leaves_adopted_global_providers_running() -> None:
    script = textwrap.dedent("""
        import atexit
        from opentelemetry import metrics, trace
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        exporter = InMemorySpanExporter()
        provider = TracerProvider()  # as the SDK configurator builds it: with an exit handler
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider())
        from memspan import bootstrap
        from memspan.instrumentor import MemspanInstrumentor
        instrumentor = MemspanInstrumentor()
        instrumentor.instrument()
        assert bootstrap.current_installation().providers.owned == [
            provider, metrics.get_meter_provider()]
        instrumentor.uninstrument()
        with trace.get_tracer("after").start_as_current_span("still-exported"):
            pass
        print([s.name for s in exporter.get_finished_spans()])
    """)
    result = run_python(script, env=clean_env(MEMSPAN_QUIET="true"))
    assert result.returncode == 0, result.stderr
    assert "['still-exported']" in result.stdout


@pytest.mark.parametrize(("extra", "expected"), [
    ({}, "nightly_job"),  # the script's name, as memspan run names its child
    ({"OTEL_SERVICE_NAME": "svc"}, "svc"),
    ({"OTEL_RESOURCE_ATTRIBUTES": "team=ml,service.name=res"}, "res"),
], ids=["script-name", "otel-service-name", "resource-attributes"])
def test_service_name_under_opentelemetry_instrument_falls_back_to_the_script(
        tmp_path: Path, extra: dict[str, str], expected: str) -> None:
    # the distro's configurator builds the providers before memspan loads
    script = tmp_path / "nightly_job.py"
    script.write_text("import memspan\nwith memspan.phase('work'):\n    pass\n")
    env = clean_env(OTEL_TRACES_EXPORTER="memspan_file", OTEL_METRICS_EXPORTER="memspan_file",
                    OTEL_LOGS_EXPORTER="none", MEMSPAN_OUTPUT_DIR="out", MEMSPAN_QUIET="true",
                    **extra)
    result = run_instrumented(script, tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert phase_services(tmp_path / "out")["work"] == {expected}
    assert metric_services(tmp_path / "out")["process.memory.usage"] == {expected}
