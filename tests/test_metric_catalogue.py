"""The metric catalogue: a new memory source is its own class plus its catalogue rows.

The fake source below is defined only here. It declares its rows and its cadence on its
class, as every real source does; nothing else in memspan is told about it, and its metrics
come out with the declared instrument kind, unit, description, window peak, counter event
and cadence.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import Gauge, Sum

from memspan import MemspanConfig, names
from memspan.instruments import METRIC_CATALOGUE
from memspan.metric_catalogue import (
    Cadence,
    InstrumentKind,
    MetricCatalogue,
    MetricRow,
)
from memspan.names import EventType
from memspan.sources import STANDARD_SOURCES, DeviceIdentity, Reading, SourceStatus

POOL_USAGE = "fakepool.memory.usage"
POOL_WINDOW_PEAK = "fakepool.memory.window_peak"
POOL_EVICTIONS = "fakepool.evictions"
POOL0 = (("fakepool.id", "pool-0"),)


class FakePoolSource:
    """A memory pool that is slow to read: usage, its window peak, and an eviction count."""

    name = "fakepool"
    cadence = Cadence.SLOW
    metrics = (
        MetricRow(POOL_USAGE, InstrumentKind.UP_DOWN_COUNTER, "By", "Bytes held by the pool"),
        MetricRow(POOL_WINDOW_PEAK, InstrumentKind.GAUGE, "By",
                  "Highest pool bytes since the previous export", window_peak=True),
        MetricRow(POOL_EVICTIONS, InstrumentKind.COUNTER, "1", "Blocks the pool evicted",
                  counter_event=EventType.ALLOC_RETRY),
    )

    def __init__(self) -> None:
        self.usage = 0
        self.evictions = 0
        self.samples = 0

    def probe(self) -> SourceStatus:
        return SourceStatus(True)

    def devices(self) -> Sequence[DeviceIdentity]:
        return ()

    def sample(self) -> Sequence[Reading]:
        self.samples += 1
        return [Reading(POOL_USAGE, self.usage, POOL0),
                Reading(POOL_WINDOW_PEAK, self.usage, POOL0),
                Reading(POOL_EVICTIONS, self.evictions, POOL0)]

    def capabilities(self) -> frozenset[str]:
        return frozenset(row.name for row in self.metrics)

    def snapshot(self) -> dict[str, Any]:
        return {"usage": self.usage}

    def after_fork(self) -> None:
        pass

    def close(self) -> None:
        pass


def _points(metric: Any) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(p.attributes.items())): p.value for p in metric.data.data_points}


class FastPoolSource(FakePoolSource):
    """The same pool read every tick (so a test sees each sample)."""

    cadence = Cadence.FAST


def test_a_new_source_is_exported_from_its_own_rows(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    pool = FastPoolSource()
    t = telemetry_factory(sources=[pool])
    sampler = t.tracker.sampler
    pool.usage = 100
    sampler.sample_once()
    for usage in (900, 200):
        pool.usage = usage
        sampler.sample_once()
    metrics = t.metrics()
    usage, peak, evictions = (metrics[POOL_USAGE], metrics[POOL_WINDOW_PEAK],
                              metrics[POOL_EVICTIONS])
    assert (usage.unit, usage.description) == ("By", "Bytes held by the pool")
    assert isinstance(usage.data, Sum) and usage.data.is_monotonic is False
    assert isinstance(peak.data, Gauge) and peak.unit == "By"
    assert isinstance(evictions.data, Sum) and evictions.data.is_monotonic is True
    assert evictions.unit == "1"
    assert _points(usage) == {POOL0: 200}
    assert _points(peak) == {POOL0: 900}  # the window's peak, not the latest value
    assert _points(t.metrics()[POOL_WINDOW_PEAK]) == {POOL0: 200}  # a new window
    assert POOL_USAGE in t.tracker.instruments.names
    # the standard metrics are still there beside the new ones
    assert names.PROCESS_MEMORY_USAGE in t.tracker.instruments.names


def test_a_new_counter_rise_becomes_its_declared_ring_event(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    pool = FastPoolSource()
    t = telemetry_factory(sources=[pool])
    sampler = t.tracker.sampler
    sampler.sample_once()
    pool.evictions = 3
    sampler.sample_once()
    events = [e for e in t.tracker.flight_recorder.recorder.ring.snapshot()
              if e.get("metric") == POOL_EVICTIONS]
    assert len(events) == 1
    assert events[0]["type"] == EventType.ALLOC_RETRY.value
    assert (events[0]["before"], events[0]["after"]) == (0, 3)


def test_a_source_declares_its_own_cadence(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    pool = FakePoolSource()
    t = telemetry_factory(sources=[pool], config=MemspanConfig(nvml_interval_s=3600.0))
    for _ in range(3):
        t.tracker.sampler.sample_once()
    assert pool.samples == 1  # slow: once per slow interval, not every tick
    fast = FastPoolSource()
    t = telemetry_factory(sources=[fast], config=MemspanConfig(nvml_interval_s=3600.0))
    for _ in range(3):
        t.tracker.sampler.sample_once()
    assert fast.samples == 3


def test_every_reader_takes_its_column_from_the_catalogue() -> None:
    catalogue = MetricCatalogue.for_sources(STANDARD_SOURCES, [FakePoolSource()])
    assert POOL_WINDOW_PEAK in catalogue.window_peaks
    assert names.TORCH_ALLOCATED_WINDOW_PEAK in catalogue.window_peaks
    assert catalogue.counters >= {POOL_EVICTIONS, names.TORCH_OOMS, names.CGROUP_OOM_KILLS}
    assert catalogue.counter_events[names.CGROUP_OOM_KILLS] is EventType.CGROUP_OOM_KILL
    assert catalogue.row(names.PHASE_DURATION).kind is InstrumentKind.HISTOGRAM
    assert names.PHASE_DURATION not in {row.name for row in catalogue.sampled}
    standard = {name for name, _, _ in METRIC_CATALOGUE}
    assert POOL_USAGE not in standard and names.GPU_UTILIZATION in standard


def test_the_catalogue_refuses_a_name_declared_twice_differently() -> None:
    clash = MetricRow(names.PROCESS_MEMORY_USAGE, InstrumentKind.GAUGE, "By", "other meaning")
    with pytest.raises(ValueError, match=re.escape(names.PROCESS_MEMORY_USAGE)):
        MetricCatalogue.for_sources(STANDARD_SOURCES, [clash_source(clash)])
    with pytest.raises(KeyError, match=re.escape("fakepool.unknown")):
        MetricCatalogue.for_sources(STANDARD_SOURCES).row("fakepool.unknown")


def test_rows_refuse_impossible_combinations() -> None:
    with pytest.raises(ValueError, match="window peak"):
        MetricRow("fakepool.x", InstrumentKind.COUNTER, "By", "x", window_peak=True)
    with pytest.raises(ValueError, match="counter"):
        MetricRow("fakepool.y", InstrumentKind.GAUGE, "By", "y",
                  counter_event=EventType.ALLOC_RETRY)


def clash_source(row: MetricRow) -> object:
    class Clash(FakePoolSource):
        metrics = (row,)

    return Clash()


def test_a_collection_drains_finished_phases_before_reading_histograms(telemetry) -> None:  # type: ignore[no-untyped-def]
    """The drop counter's callback drains finished phases first (no flush, no worker tick)."""
    t = telemetry
    t.tracker.exporter.shutdown()  # no worker: only the collection can drain
    with t.tracker.phase("collected"):
        pass
    data = t.reader.get_metrics_data()  # a plain collection, not Telemetry.metrics()
    durations = [p for rm in data.resource_metrics for sm in rm.scope_metrics
                 for m in sm.metrics if m.name == names.PHASE_DURATION
                 for p in m.data.data_points]
    assert [p.count for p in durations
            if p.attributes.get(names.PHASE_PATH) == "collected"] == [1]
