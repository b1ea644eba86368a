"""Run by test_sdk_versions.py inside a venv with another OpenTelemetry SDK release.

Prints one JSON object: the SDK version, the span path chosen, and what the exported spans
look like, for the default provider, a provider whose processor works in on_start, and a tracer
whose internals are missing (the fallback).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.version import __version__ as api_version

from memspan import Tracker, names
from memspan.sources.host import HostMemorySource


class Delegating(trace.Tracer):
    """A tracer that is not the SDK's (a vendor wrapper, say): only the public API."""

    def __init__(self, inner: trace.Tracer) -> None:
        self._inner = inner

    def start_span(self, *args: Any, **kwargs: Any) -> trace.Span:
        return self._inner.start_span(*args, **kwargs)

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.start_as_current_span(*args, **kwargs)


class StartWork(SpanProcessor):
    def on_start(self, span: Any, parent_context: Any = None) -> None:
        span.set_attribute("seen.on_start", True)


def run(provider: TracerProvider, exporter: InMemorySpanExporter,
        break_tracer: bool = False) -> dict[str, Any]:
    tracker = Tracker(tracer_provider=provider, sources=[HostMemorySource()], start_sampler=False)
    if break_tracer:  # a tracer without the internals the deferred path needs
        from memspan.phases.span_path import resolve

        tracker.span_paths.use(resolve(Delegating(tracker.span_path.tracer), "deferred"))
    foreign = provider.get_tracer("other")
    try:
        with tracker.phase("train"), tracker.phase("step"), tracker.phase("forward"), \
                foreign.start_as_current_span("GET /batch"):
            pass
        try:
            with tracker.phase("train"), tracker.phase("boom"):
                raise KeyError("x")
        except KeyError:
            pass
        provider.force_flush()  # a batch processor exports on flush; the others already have
    finally:
        tracker.shutdown()
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    out = []
    for span in spans:
        attributes = dict(span.attributes or {})
        parent = by_id.get(span.parent.span_id).name if span.parent is not None and \
            span.parent.span_id in by_id else None
        out.append({"name": span.name, "parent": parent,
                    "path": attributes.get(names.PHASE_PATH),
                    "has_rss_end": names.RSS_END in attributes,
                    "events": [e.name for e in span.events],
                    "status": span.status.status_code.name,
                    "on_start": attributes.get("seen.on_start", False),
                    "links": len(span.links)})
    return {"mode": tracker.span_path.mode, "spans": sorted(out, key=lambda s: str(s["name"]))}


def histograms_match() -> bool:
    """Phase histograms recorded in batches equal the SDK's own record() on this release."""
    import random

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from memspan.phases.histograms import BYTE_BUCKETS, SECOND_BUCKETS, PhaseHistograms

    rng = random.Random(7)
    samples = [(rng.random(), rng.randrange(1 << 30), rng.choice("ab"), "host", None)
               for _ in range(500)]
    figures = []
    for direct in (True, False):
        reader = InMemoryMetricReader()
        meter = MeterProvider(metric_readers=[reader]).get_meter("t")
        histograms = PhaseHistograms(
            meter.create_histogram("d", explicit_bucket_boundaries_advisory=SECOND_BUCKETS),
            meter.create_histogram("p", explicit_bucket_boundaries_advisory=BYTE_BUCKETS),
            direct=direct)
        histograms.record_batch(samples)
        histograms.record_batch(samples)
        data = reader.get_metrics_data()
        assert data is not None
        figures.append(sorted(
            (m.name, tuple(sorted(p.attributes.items())), p.count, tuple(p.bucket_counts),
             round(p.sum, 6)) for rm in data.resource_metrics for sm in rm.scope_metrics
            for m in sm.metrics for p in m.data.data_points))
    return figures[0] == figures[1]


def main() -> None:
    from memspan.otel_internals import internals_report

    results: dict[str, Any] = {"api": api_version, "python": sys.version.split()[0],
                               "histograms_match": histograms_match(),
                               "internals": internals_report()}
    for label, with_start, broken in (("plain", False, False), ("batched", False, False),
                                      ("on_start", True, False),
                                      ("missing_internals", False, True)):
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        if with_start:
            provider.add_span_processor(StartWork())
        provider.add_span_processor(BatchSpanProcessor(exporter) if label == "batched"
                                    else SimpleSpanProcessor(exporter))
        results[label] = run(provider, exporter, broken)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
