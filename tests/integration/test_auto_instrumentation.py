"""opentelemetry-instrument loads memspan: auto phases and metrics over real OTLP/HTTP."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path
from typing import Any

from launcher_helpers import clean_env, run_instrumented
from memspan import names

from .otlp_receiver import attributes_of, otlp_http_receiver

TRAINING = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = DataLoader(TensorDataset(torch.randn(32, 16), torch.randint(0, 4, (32,))), batch_size=8)
    for inputs, labels in data:
        loss = nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    print("trained")
""")


def instrument_env(endpoint: str, **extra: str) -> dict[str, str]:
    env = clean_env()
    env.update({
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "none",
        "OTEL_SERVICE_NAME": "auto-test",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "MEMSPAN_SAMPLE_INTERVAL": "0.05",
    })
    env.update(extra)
    return env


def train_instrumented(tmp_path: Path, **extra_env: str) -> tuple[
        subprocess.CompletedProcess[str], list[Any], set[str]]:
    """Run the training script under opentelemetry-instrument against a real receiver."""
    script = tmp_path / "train.py"
    script.write_text(TRAINING)
    with otlp_http_receiver() as (endpoint, received):
        result = run_instrumented(script, env=instrument_env(endpoint, **extra_env), timeout=180)
        return result, [span for _, span in received.spans()], received.metric_names()


def test_auto_phases_and_metrics_reach_a_real_otlp_receiver(tmp_path: Path) -> None:
    result, spans, metric_names = train_instrumented(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "trained" in result.stdout
    by_name: dict[str, list[object]] = {}
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    assert len(by_name["forward"]) == 4  # the outermost module call only, once per batch
    assert len(by_name["backward"]) == 4
    assert len(by_name["optimizer.step"]) == 4
    assert len(by_name["dataloader.next"]) == 4  # the exhausted fetch is no iteration
    assert len(by_name["step"]) == 4  # one automatic step per iteration...
    traces = {span.trace_id for span in spans}  # type: ignore[attr-defined]
    assert len(traces) == 4  # ...and one trace per step, holding all of its phases
    forward = by_name["forward"][0]
    attrs = attributes_of(forward.attributes)  # type: ignore[attr-defined]
    assert attrs[names.PHASE_PATH] == "step / forward"
    assert attrs["module"] == "Sequential"
    assert names.RSS_PEAK in attrs and names.RETAINED in attrs
    assert {names.PROCESS_MEMORY_USAGE, names.PHASE_DURATION, names.PHASE_MEMORY_PEAK} <= metric_names


def test_disabled_instrumentation_emits_nothing_from_memspan(tmp_path: Path) -> None:
    result, spans, metric_names = train_instrumented(
        tmp_path, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="memspan")
    assert result.returncode == 0, result.stderr
    assert not [s for s in spans if s.name in {"forward", "backward", "optimizer.step"}]
    assert not {n for n in metric_names if n.startswith("memspan.") or n == "process.memory.usage"}


def test_bad_configuration_disables_memspan_but_the_program_runs(tmp_path: Path) -> None:
    result, spans, _ = train_instrumented(tmp_path, MEMSPAN_SAMPLE_INTERVAL="often")
    assert result.returncode == 0
    assert "trained" in result.stdout
    assert "MEMSPAN_SAMPLE_INTERVAL='often' is not a number" in result.stderr
    assert not [s for s in spans if s.name == "forward"]
