"""Metrics dashboards and alerts read: counters whose every series exists at zero from the
start (``increase()`` counts the first event), and the exact phase window peak."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from memspan import drops, names
from memspan.drops import REASONS, DropLedger
from memspan.instruments import AlertCounter
from memspan.phases.histograms import PhaseWindowPeaks


def series(reader: InMemoryMetricReader, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {tuple(sorted(p.attributes.items())): p.value
            for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
            if m.name == name for p in m.data.data_points}


def test_every_drop_reason_constant_is_in_the_vocabulary() -> None:
    tree = ast.parse(Path(drops.__file__).read_text())
    constants = {node.target.id for node in tree.body
                 if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                 and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
    assert {getattr(drops, c) for c in constants} == set(REASONS)
    assert len(set(REASONS)) == len(REASONS)


def test_alert_counter_has_every_series_at_zero_and_keeps_only_its_label() -> None:
    reader = InMemoryMetricReader()
    meter = MeterProvider(metric_readers=[reader]).get_meter("t")
    counter = AlertCounter(meter.create_counter(names.OOM_COUNT), names.OOM_KIND,
                           ["device_oom", "host_oom"])
    assert series(reader, names.OOM_COUNT) == {
        ((names.OOM_KIND, "device_oom"),): 0, ((names.OOM_KIND, "host_oom"),): 0,
        ((names.OOM_KIND, "unknown"),): 0}
    counter.add(1, {names.OOM_KIND: "host_oom", names.PHASE_PATH: "train / step"})
    counter.add(1, {names.OOM_KIND: "made_up"})  # outside the vocabulary: "unknown"
    counter.add(0)  # the old start-up call: a no-op
    assert series(reader, names.OOM_COUNT) == {
        ((names.OOM_KIND, "device_oom"),): 0, ((names.OOM_KIND, "host_oom"),): 1,
        ((names.OOM_KIND, "unknown"),): 1}


def test_tracker_exports_every_oom_kind_and_drop_reason_at_zero(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    t = telemetry_factory()
    metrics = t.metrics()
    kinds = {dict(p.attributes)[names.OOM_KIND]: p.value
             for p in metrics[names.OOM_COUNT].data.data_points}
    assert kinds == dict.fromkeys(["device_oom", "host_oom", "possible_oom", "oom_killed",
                                   "unknown"], 0)
    reasons = {dict(p.attributes)[names.DROP_REASON]: p.value
               for p in metrics[names.RECORDER_DROPPED].data.data_points}
    assert reasons == dict.fromkeys(REASONS, 0)


def test_window_peak_is_the_highest_of_the_window_then_the_last_shown() -> None:
    ledger = DropLedger()
    peaks = PhaseWindowPeaks(ledger, max_series=2)

    def observe() -> dict[tuple[str, str], int | float]:
        return {(o.attributes[names.PHASE_PATH], o.attributes[names.MEMORY_DEVICE]): o.value
                for o in peaks.observe(None)}  # type: ignore[arg-type, index]

    assert observe() == {}
    peaks.offer({("step", "host"): 300})
    peaks.offer({("step", "host"): 500, ("load", "host"): 7})
    peaks.offer({("step", "host"): 400})
    assert observe() == {("step", "host"): 500, ("load", "host"): 7}
    peaks.offer({("step", "host"): 100})  # a lower window: the gauge follows it down
    assert observe() == {("step", "host"): 100, ("load", "host"): 7}
    assert observe() == {("step", "host"): 100, ("load", "host"): 7}  # nothing ran: kept
    peaks.offer({("third", "host"): 1})  # beyond max_series: counted, not kept
    assert observe() == {("step", "host"): 100, ("load", "host"): 7}
    assert ledger.count(drops.PHASE_PEAK_SERIES_FULL) == 1
    peaks.disable()
    assert observe() == {}


def test_tracker_window_peak_equals_the_spans_true_peak(telemetry_factory) -> None:  # type: ignore[no-untyped-def]
    t = telemetry_factory()
    with t.tracker.phase("load"):
        block = bytearray(8 << 20)
    del block
    for _ in range(3):
        with t.tracker.phase("step"):
            pass
    gauge = {dict(p.attributes)[names.PHASE_PATH]: p.value
             for p in t.metrics()[names.PHASE_MEMORY_WINDOW_PEAK].data.data_points}
    spans = t.finished()
    truth = {path: max(s.attributes[names.RSS_PEAK] for s in spans  # type: ignore[type-var]
                       if s.attributes and s.attributes[names.PHASE_PATH] == path)
             for path in ("load", "step")}
    assert gauge == truth
