"""Phase histograms recorded in batches: exact counts, sums and buckets, exemplars that link."""

from __future__ import annotations

import random
from typing import Any

import pytest
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from opentelemetry.trace import SpanContext, TraceFlags

from memspan import names
from memspan.phases.histograms import BYTE_BUCKETS, SECOND_BUCKETS, PhaseHistograms


def _points(reader: InMemoryMetricReader) -> dict[tuple[str, Any], Any]:
    data = reader.get_metrics_data()
    out: dict[tuple[str, Any], Any] = {}
    assert data is not None
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    out[(metric.name, tuple(sorted(point.attributes.items())))] = point
    return out


def _histograms(direct: bool, reader: InMemoryMetricReader) -> PhaseHistograms:
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    return PhaseHistograms(
        meter.create_histogram(names.PHASE_DURATION, unit="s",
                               explicit_bucket_boundaries_advisory=SECOND_BUCKETS),
        meter.create_histogram(names.PHASE_MEMORY_PEAK, unit="By",
                               explicit_bucket_boundaries_advisory=BYTE_BUCKETS),
        direct=direct)


def _samples(seed: int, n: int) -> list[Any]:
    rng = random.Random(seed)
    return [(rng.random() * 2, rng.choice([None, rng.randrange(1 << 30)]),
             rng.choice(["train", "train / step", "eval"]), rng.choice(["host", "cuda:0"]), None)
            for _ in range(n)]


@pytest.mark.parametrize("temporality", [AggregationTemporality.CUMULATIVE,
                                         AggregationTemporality.DELTA])
def test_direct_aggregation_gives_the_sdks_own_figures(temporality: AggregationTemporality) -> None:
    preferred = {SdkHistogram: temporality}
    fast_reader = InMemoryMetricReader(preferred_temporality=preferred)
    slow_reader = InMemoryMetricReader(preferred_temporality=preferred)
    fast, slow = _histograms(True, fast_reader), _histograms(False, slow_reader)
    for batch in range(4):
        samples = _samples(batch, 500)
        fast.record_batch(samples)
        slow.record_batch(samples)
        fast_points, slow_points = _points(fast_reader), _points(slow_reader)
        assert fast_points.keys() == slow_points.keys()
        for key, point in slow_points.items():
            other = fast_points[key]
            assert (other.count, other.bucket_counts, other.min, other.max) == (
                point.count, point.bucket_counts, point.min, point.max), key
            assert other.sum == pytest.approx(point.sum), key


def test_exemplars_link_only_the_last_phase_of_each_bucket() -> None:
    reader = InMemoryMetricReader()
    histograms = _histograms(True, reader)
    linked = [SpanContext(trace_id=i + 1, span_id=i + 1, is_remote=False,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED)) for i in range(3)]
    histograms.record_batch([(0.003, 5 << 20, "p", "host", linked[0]),
                             (0.004, 5 << 20, "p", "host", linked[1]),  # same buckets: last wins
                             (0.5, None, "p", "host", None)])  # dropped span: never linked
    points = _points(reader)
    duration = points[(names.PHASE_DURATION, ((names.PHASE_PATH, "p"),))]
    assert duration.count == 3
    assert [e.span_id for e in duration.exemplars] == [linked[1].span_id]
