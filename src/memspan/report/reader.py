"""Stream the embedded default output (OTLP JSON lines) into a :class:`ReportModel`.

One line at a time: memory stays bounded by the model, not by the input. A line that does
not parse is counted and skipped. ``<file>.1`` (the rotated older part) is read first.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

from memspan import names
from memspan.report.model import OOMMarker, ReportModel, TimelineSpan

CURVE_METRICS = (
    names.PROCESS_MEMORY_USAGE,
    names.TORCH_ALLOCATED,
    names.TORCH_RESERVED,
    names.GPU_MEMORY_USAGE,
    names.CGROUP_MEMORY_USAGE,
    names.CGROUP_MEMORY_LIMIT,
)


def _value(value: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    return None


def attributes(items: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {a["key"]: _value(a.get("value", {})) for a in items or []}


class Progress:
    """A one-line progress bar on stderr, only when stderr is a terminal."""

    def __init__(self, total: int, label: str) -> None:
        self.total = max(1, total)
        self.label = label
        self.enabled = sys.stderr.isatty() and total > 8 * 1024 * 1024
        self._last = -1

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        percent = min(100, done * 100 // self.total)
        if percent != self._last:
            self._last = percent
            bar = "#" * (percent // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {percent:3d}%")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _lines(path: str, progress: Callable[[int], None]) -> Iterator[dict[str, Any]]:
    done = 0
    for part in (path + ".1", path):
        if not os.path.exists(part):
            continue
        with open(part, "rb") as handle:
            for raw in handle:
                done += len(raw)
                progress(done)
                try:
                    record = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(record, dict):
                    yield record


def _size(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + ".1") if os.path.exists(p))


def read_traces(path: str, model: ReportModel) -> None:
    progress = Progress(_size(path), "reading spans")
    for record in _lines(path, progress.update):
        for resource_spans in record.get("resourceSpans", []):
            resource = attributes(resource_spans.get("resource", {}).get("attributes"))
            model.environment = model.environment or resource.get(
                "deployment.environment.name") or resource.get("deployment.environment")
            model.service = model.service or resource.get("service.name")
            for scope_spans in resource_spans.get("scopeSpans", []):
                for span in scope_spans.get("spans", []):
                    _add_span(span, model)
    progress.close()


def _add_span(span: dict[str, Any], model: ReportModel) -> None:
    attrs = attributes(span.get("attributes"))
    start = int(span.get("startTimeUnixNano", 0))
    end = int(span.get("endTimeUnixNano", 0))
    model.see_time(start, end)
    for event in span.get("events", []):
        if event.get("name") == names.OOM_EVENT:
            event_attrs = attributes(event.get("attributes"))
            model.add_oom(OOMMarker(
                int(event.get("timeUnixNano", end)), str(event_attrs.get(names.OOM_KIND, "?")),
                str(attrs.get(names.PHASE_PATH, span.get("name", ""))),
                event_attrs.get(names.OOM_DUMP_PATH), str(event_attrs.get(names.OOM_REASON, "")),
            ))
    path = attrs.get(names.PHASE_PATH)
    if not isinstance(path, str):
        return
    model.spans_read += 1
    depth = int(attrs.get(names.PHASE_DEPTH, 1))
    error = span.get("status", {}).get("code") == 2
    model.add_timeline(TimelineSpan(max(0, end - start), start, end, str(span.get("name", "")),
                                    path, depth, error))
    device = str(attrs.get(names.MEMORY_DEVICE, "host"))
    # Boundary readings draw a curve even for a job shorter than one metric export.
    start_key, end_key, label = (
        (names.ALLOCATED_START, names.ALLOCATED_END, f"allocated at phase edges [{device}]")
        if device != "host" else (names.RSS_START, names.RSS_END, "RSS at phase edges"))
    if isinstance(attrs.get(start_key), int) and isinstance(attrs.get(end_key), int):
        curve = model.curve(label)
        curve.add(start, float(attrs[start_key]))
        curve.add(end, float(attrs[end_key]))
    stats = model.path_stats(path, depth)
    if stats is None:
        return
    stats.device = device
    if device != "host" and names.ALLOCATED_START in attrs:
        figures = (attrs.get(names.ALLOCATED_PEAK), attrs.get(names.ALLOCATED_START),
                   attrs.get(names.ALLOCATED_END))
    else:
        figures = (attrs.get(names.RSS_PEAK), attrs.get(names.RSS_START), attrs.get(names.RSS_END))
    stats.add((end - start) / 1e9, *figures)


def read_metrics(path: str, model: ReportModel) -> None:
    progress = Progress(_size(path), "reading metrics")
    for record in _lines(path, progress.update):
        for resource_metrics in record.get("resourceMetrics", []):
            for scope_metrics in resource_metrics.get("scopeMetrics", []):
                for metric in scope_metrics.get("metrics", []):
                    name = metric.get("name")
                    if name not in CURVE_METRICS:
                        continue
                    data = metric.get("sum") or metric.get("gauge") or {}
                    for point in data.get("dataPoints", []):
                        point_attrs = attributes(point.get("attributes"))
                        label = point_attrs.get(names.MEMORY_DEVICE) or point_attrs.get(names.HW_ID)
                        key = f"{name} [{label}]" if label else name
                        value = point.get("asInt", point.get("asDouble"))
                        if value is None:
                            continue
                        time_ns = int(point.get("timeUnixNano", 0))
                        model.see_time(time_ns)
                        model.curve(key).add(time_ns, float(value))
    progress.close()
