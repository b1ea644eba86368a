"""OTLP JSON encoding of a batch of phase spans: the library's encoder against memspan's.

The spans are real memspan phase spans (nested phases with user attributes, about 20
attributes each) from a Tracker on a provider with the embedded default's span limits, so
their attributes are the SDK's ``BoundedAttributes`` as in ``memspan-out/traces.jsonl``.
Batches of 512 (the ``BatchSpanProcessor``'s export size); several distinct batches are
encoded in turn so the string cache sees the churn of a long run, not one batch again.

Times are CPU time of the measuring thread. Rows: µs per span for
``encode_spans(spans).to_dict()`` and ``encode_spans_dict(spans)``, each alone and with the
``json.dumps`` the exporter adds; ratios against the library.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from _table import Row, report
from opentelemetry.exporter.otlp.json.common.trace_encoder import encode_spans
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import memspan
from memspan.export.embedded import span_limits
from memspan.export.span_json import encode_spans_dict, try_encode_spans_dict
from memspan.sources import HostMemorySource

BATCH = 512


def phase_spans(count: int) -> list[ReadableSpan]:
    """``count`` finished phase spans: steps of forward/backward/optimizer phases."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=span_limits())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracker = memspan.Tracker(
        tracer_provider=provider,
        meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
        sources=[HostMemorySource()],
        start_sampler=False,
    )
    step = 0
    while len(exporter.get_finished_spans()) < count:
        with tracker.phase("step", step=step, epoch=step // 100, model="resnet50"):
            for name in ("forward", "backward", "optimizer"):
                with tracker.phase(
                    name, step=step, lr=0.001 * (1 + step % 7), batch_size=64, dtype="bfloat16", amp=True
                ):
                    pass
        step += 1
    tracker.shutdown()
    return list(exporter.get_finished_spans())[:count]


def cpu_median(functions: dict[str, Callable[[int], None]], calls: int, rounds: int = 7) -> dict[str, float]:
    """Median CPU µs of this thread per call of each function, in alternating rounds (the
    ``_table.interleaved_median`` scheme on ``time.thread_time``: a shared machine's other
    load does not count)."""
    samples: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():  # warm-up
        function(max(1, calls // 4))
    for _ in range(rounds):
        for name, function in functions.items():
            started = time.thread_time()
            function(calls)
            samples[name].append((time.thread_time() - started) / calls * 1e6)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    batches_count = int(sys.argv[1]) if len(sys.argv) > 1 else 8
    calls = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    spans = phase_spans(BATCH * batches_count)
    batches = [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]
    attributes = sum(len(s.attributes) for s in spans) / len(spans)
    for batch in batches:
        fast = try_encode_spans_dict(batch)
        assert fast is not None, "a phase span fell back to the library encoder"
        assert fast == encode_spans(batch).to_dict()

    def cycling(encode: Callable[[Sequence[ReadableSpan]], object]) -> Callable[[int], None]:
        def run(n: int) -> None:
            for i in range(n):
                encode(batches[i % len(batches)])

        return run

    def library_line(batch: Sequence[ReadableSpan]) -> str:
        return json.dumps(encode_spans(batch).to_dict(), separators=(",", ":"))

    def memspan_line(batch: Sequence[ReadableSpan]) -> str:
        return json.dumps(encode_spans_dict(batch), separators=(",", ":"))

    per_batch = cpu_median(
        {
            "library": cycling(lambda batch: encode_spans(batch).to_dict()),
            "memspan": cycling(encode_spans_dict),
            "library_line": cycling(library_line),
            "memspan_line": cycling(memspan_line),
        },
        calls * len(batches),
    )
    us = {name: value / BATCH for name, value in per_batch.items()}
    rows = [
        Row(f"attributes per span (batches of {BATCH})", attributes, ""),
        Row("library encode_spans().to_dict(): per span", us["library"], "us", "", 1.0),
        Row("memspan encode_spans_dict(): per span", us["memspan"], "us", "", us["memspan"] / us["library"]),
        Row("speed-up of the dict encoding", us["library"] / us["memspan"], "x"),
        Row("library dict + json.dumps: per span", us["library_line"], "us", "", 1.0),
        Row(
            "memspan dict + json.dumps: per span",
            us["memspan_line"],
            "us",
            "",
            us["memspan_line"] / us["library_line"],
        ),
        Row("speed-up of the exported line", us["library_line"] / us["memspan_line"], "x"),
    ]
    report("span_encoding", rows)


if __name__ == "__main__":
    main()
