"""What a report knows about one session (one process's tracker), accumulated from a stream.

Invariant: memory is bounded whatever the input size. Per phase path: a few numbers here and
a :class:`~memspan.analysis.run_series.RunSeries` in the model's
:class:`~memspan.analysis.attribution.CycleAttribution`; the timeline keeps the
``max_timeline`` longest phases of depth <= ``timeline_depth``; each memory curve is
downsampled (keeping the maximum of merged points, so peaks survive); OOM markers and bundles
are capped. Paths beyond ``max_paths`` are counted, not stored.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from memspan.analysis.attribution import CycleAttribution


@dataclass
class PathStats:
    path: str
    depth: int
    device: str = "host"
    runs: int = 0
    total_s: float = 0.0
    max_s: float = 0.0
    peak: int | None = None
    added: int | None = None  # the most one run added at its peak (peak - start)

    def add(self, duration_s: float, peak: int | None, start: int | None,
            end: int | None) -> None:
        self.runs += 1
        self.total_s += duration_s
        self.max_s = max(self.max_s, duration_s)
        if peak is not None and (self.peak is None or peak > self.peak):
            self.peak = peak
        if start is not None:
            top = max(x for x in (peak, end, start) if x is not None)
            if self.added is None or top - start > self.added:
                self.added = top - start


@dataclass(order=True)
class TimelineSpan:
    duration_ns: int
    start_ns: int = field(compare=False)
    end_ns: int = field(compare=False)
    name: str = field(compare=False)
    path: str = field(compare=False)
    depth: int = field(compare=False)
    error: bool = field(compare=False)


class Curve:
    """A peak-preserving downsampled (x, value) series."""

    def __init__(self, max_points: int = 1500) -> None:
        self.points: list[tuple[int, float]] = []
        self.max_points = max_points

    def add(self, x: int, value: float) -> None:
        self.points.append((x, value))
        if len(self.points) >= 2 * self.max_points:
            self.points.sort()
            merged = []
            for i in range(0, len(self.points) - 1, 2):
                a, b = self.points[i], self.points[i + 1]
                merged.append(a if a[1] >= b[1] else b)
            if len(self.points) % 2:
                merged.append(self.points[-1])
            self.points = merged

    def sorted_points(self) -> list[tuple[int, float]]:
        return sorted(self.points)


@dataclass
class OOMRecord:
    """One out-of-memory occurrence; ``dump_path`` absolute when known."""

    time_ns: int
    kind: str
    path: str
    reason: str
    dump_path: str | None = None
    source: str = "span"


@dataclass
class RunInfo:
    """What ``memspan run`` recorded about its child (the ``memspan.run`` span)."""

    start_ns: int
    end_ns: int
    service: str | None = None
    launcher_service: str | None = None
    host: str | None = None
    command: list[str] = field(default_factory=list)
    pid: int | None = None
    exit_code: int | None = None
    status_message: str | None = None
    peak_bytes: int | None = None
    limit_bytes: int | None = None
    attributes: dict[str, Any] = field(default_factory=dict)
    oom: OOMRecord | None = None
    oom_confidence: str | None = None


@dataclass
class ReportModel:
    """One session's figures (or all sessions', when merged on request)."""

    key: str = ""
    max_paths: int = 2000
    max_timeline: int = 1500
    timeline_depth: int = 3
    max_ooms: int = 200
    paths: dict[str, PathStats] = field(default_factory=dict)
    attribution: CycleAttribution = field(default_factory=CycleAttribution)
    timeline: list[TimelineSpan] = field(default_factory=list)
    curves: dict[str, Curve] = field(default_factory=dict)
    steps: Curve = field(default_factory=lambda: Curve(3000))  # (phase start, end figure)
    ooms: list[OOMRecord] = field(default_factory=list)
    bundles: list[dict[str, Any]] = field(default_factory=list)
    environment: str | None = None
    service: str | None = None
    host: str | None = None
    rank: int | None = None
    instance_ids: set[str] = field(default_factory=set)
    memspan_version: str | None = None
    command: list[str] = field(default_factory=list)
    pid: int | None = None
    run: RunInfo | None = None
    spans_read: int = 0
    paths_dropped: int = 0
    ooms_dropped: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    step_device: str | None = None
    steps_first: tuple[int, float] | None = None  # the first phase's start figure
    phases_from_breadcrumbs: int = 0

    def see_time(self, *times: int) -> None:
        for t in times:
            if t <= 0:
                continue
            self.first_ns = t if self.first_ns is None else min(self.first_ns, t)
            self.last_ns = t if self.last_ns is None else max(self.last_ns, t)

    def add_timeline(self, span: TimelineSpan) -> None:
        if span.depth > self.timeline_depth:
            return
        if len(self.timeline) < self.max_timeline:
            heapq.heappush(self.timeline, span)
        elif span.duration_ns > self.timeline[0].duration_ns:
            heapq.heapreplace(self.timeline, span)

    def path_stats(self, path: str, depth: int) -> PathStats | None:
        stats = self.paths.get(path)
        if stats is None:
            if len(self.paths) >= self.max_paths:
                self.paths_dropped += 1
                return None
            stats = self.paths[path] = PathStats(path, depth)
        return stats

    def curve(self, name: str) -> Curve:
        curve = self.curves.get(name)
        if curve is None:
            if len(self.curves) >= 32:
                curve = Curve(1)  # bounded: further series are not drawn
                return curve
            curve = self.curves[name] = Curve()
        return curve

    def add_oom(self, record: OOMRecord) -> None:
        """Add an OOM unless the same bundle (or the same moment and kind) is already there."""
        for known in self.ooms:
            if record.dump_path and known.dump_path == record.dump_path:
                if not known.path and record.path:
                    known.path = record.path
                return
        if len(self.ooms) < self.max_ooms:
            self.ooms.append(record)
        else:
            self.ooms_dropped += 1
