"""End-to-end overhead on real CPU training loops: 3 phases per step, sampler at 100 ms.

Two models sized for about 5 ms and about 50 ms per step on this machine (a small MLP and a
small conv net). Each loop runs uninstrumented, with three bare SDK spans, with three memspan
phases (every step exported), and with a ``step`` trace root around the three phases and step
sampling at 1-in-10 (``MEMSPAN_STEP_KEEP_EVERY=10``), in alternating rounds; median step
times are compared. Every variant has its own provider and batch processor, so background
work (span building, export) lands in the rounds of the variant that caused it.
Targets (issue: phase core v2): every step kept <= the overhead of 3 bare SDK spans in the same
run; with step sampling, <= 3 % on the ~5 ms step and <= 1 % on the ~50 ms step.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _table import Row, report
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from torch import nn

import memspan


class NullExporter(SpanExporter):
    def export(self, spans):  # type: ignore[no-untyped-def]
        return SpanExportResult.SUCCESS


def mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(),
                          nn.Linear(1024, 10))
    return model, torch.randn(128, 512), torch.randint(0, 10, (128,))


def convnet() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(64 * 8 * 8, 10))
    return model, torch.randn(144, 3, 32, 32), torch.randint(0, 10, (144,))


class BareSpans:
    """The same three phases as plain SDK spans: what OpenTelemetry alone costs."""

    def __init__(self, tracer_provider: TracerProvider) -> None:
        self._tracer = tracer_provider.get_tracer("bench")

    def phase(self, name: str) -> Any:
        return self._tracer.start_as_current_span(name)


def make_step(parts: tuple[nn.Module, torch.Tensor, torch.Tensor],
              tracker: memspan.Tracker | BareSpans | None, step_root: bool = False
              ) -> Callable[[], None]:
    """One training step; every variant shares the same model, data and optimizer."""
    model, inputs, labels = parts
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def plain() -> None:
        loss = loss_fn(model(inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    if tracker is None:
        return plain

    def phased() -> None:
        with tracker.phase("forward"):
            loss = loss_fn(model(inputs), labels)
        with tracker.phase("backward"):
            loss.backward()
        with tracker.phase("optimizer"):
            optimizer.step()
            optimizer.zero_grad()

    if not step_root or not isinstance(tracker, memspan.Tracker):
        return phased

    def stepped() -> None:
        with tracker.phase("step"):
            phased()

    return stepped


def memspan_tracker(**config: object) -> memspan.Tracker:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(NullExporter()))
    return memspan.Tracker(tracer_provider=tracer_provider,
                           meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
                           config=memspan.MemspanConfig(sample_interval_s=0.1, **config))


def median_step_ms(step: Callable[[], None], steps: int) -> float:
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 7
    torch.manual_seed(0)
    bare_provider = TracerProvider()
    bare_provider.add_span_processor(BatchSpanProcessor(NullExporter()))
    every = memspan_tracker()
    sampled = memspan_tracker(step_keep_every=10, step_keep_first=0)
    rows = []
    for label, build, steps, target in (("MLP", mlp, 200, 3.0), ("conv net", convnet, 30, 1.0)):
        parts = build()
        variants = {"plain": make_step(parts, None),
                    "bare": make_step(parts, BareSpans(bare_provider)),
                    "memspan": make_step(parts, every),
                    "sampled": make_step(parts, sampled, step_root=True)}
        for step in variants.values():
            median_step_ms(step, max(3, steps // 10))  # warm-up
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(rounds):
            for name, step in variants.items():
                samples[name].append(median_step_ms(step, steps))
        base_ms, bare_ms, inst_ms, sampled_ms = (statistics.median(samples[n])
                                                 for n in ("plain", "bare", "memspan", "sampled"))
        overhead = (inst_ms / base_ms - 1) * 100
        bare_overhead = (bare_ms / base_ms - 1) * 100
        sampled_overhead = (sampled_ms / base_ms - 1) * 100
        rows.append(Row(f"{label}: uninstrumented step", base_ms, "ms"))
        rows.append(Row(f"{label}: overhead of 3 bare SDK spans", bare_overhead, "%"))
        rows.append(Row(f"{label}: overhead of 3 memspan phases, every step kept", overhead, "%",
                        "<= 3 bare spans", None, overhead <= bare_overhead))
        rows.append(Row(f"{label}: overhead of step + 3 phases, 1-in-10 steps kept",
                        sampled_overhead, "%", f"<= {target:g} %", None,
                        sampled_overhead <= target))
    every.shutdown()
    sampled.shutdown()
    report("training_overhead", rows)


if __name__ == "__main__":
    main()
