"""A small phased CPU training job on memspan's embedded default output.

Run it with ``make demo``. It trains a tiny MLP for a few steps, each step split into
``forward``, ``backward`` and ``optimizer`` phases, and writes OTLP JSON lines to
``./memspan-out/``.
"""

from __future__ import annotations

import json
import os
import sys

import torch
from torch import nn

import memspan


def train(steps: int = 20) -> None:
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()
    with memspan.phase("train", model="mlp"):
        for step in range(steps):
            with memspan.phase("step", step=step):
                inputs = torch.randn(64, 256)
                labels = torch.randint(0, 10, (64,))
                with memspan.phase("forward"):
                    loss = loss_fn(model(inputs), labels)
                with memspan.phase("backward"):
                    loss.backward()
                with memspan.phase("optimizer"):
                    optimizer.step()
                    optimizer.zero_grad()


def summarize(directory: str) -> None:
    traces = os.path.join(directory, "traces.jsonl")
    metrics = os.path.join(directory, "metrics.jsonl")
    spans = []
    with open(traces, encoding="utf-8") as handle:
        for line in handle:
            for resource_spans in json.loads(line).get("resourceSpans", []):
                for scope_spans in resource_spans.get("scopeSpans", []):
                    spans.extend(scope_spans.get("spans", []))
    metric_names: set[str] = set()
    with open(metrics, encoding="utf-8") as handle:
        for line in handle:
            for resource_metrics in json.loads(line).get("resourceMetrics", []):
                for scope_metrics in resource_metrics.get("scopeMetrics", []):
                    metric_names.update(m["name"] for m in scope_metrics.get("metrics", []))
    print(f"memspan demo: {len(spans)} phase spans and {len(metric_names)} metrics written")
    print(f"  traces:  {traces}")
    print(f"  metrics: {metrics}")
    print("  look at one span:  head -c 2000 " + traces)


def main() -> int:
    tracker = memspan.configure(service_name="memspan-quickstart")
    train()
    directory = tracker.config.output_dir
    if not memspan.shutdown(timeout_s=10):
        print("memspan demo: shutdown did not finish in time", file=sys.stderr)
        return 1
    summarize(os.path.abspath(directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
