"""Stream the embedded default output (OTLP JSON lines) into one model per session.

A *session* is one tracker in one process: its phase spans carry ``memspan.session.id``
(spans without it are keyed by the resource's ``service.instance.id``). Output directories
are appended to across processes, and a report is about one session unless ``--all`` asks
for a merge. ``memspan.run`` spans (written by the launcher) are kept apart and attached to
the session that ran inside them.

Invariants: one line at a time, each line bounded (see :mod:`memspan.report.lines`);
memory is bounded by the models (at most ``max_models`` at once: the caller reads again for
a session whose model was evicted), the session index (``max_sessions``) and the run list;
a record, span or point of the wrong shape is skipped and counted (``reader.skipped``),
never raised. ``<file>.1`` (the rotated older part) is read first.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any

from memspan import names
from memspan.analysis.attribution import FinishedRun
from memspan.report.lines import WRONG_SHAPE, LineReader
from memspan.report.model import OOMRecord, ReportModel, RunInfo, TimelineSpan
from memspan.report.otlp import (
    attributes,
    integer,
    items,
    number,
    obj,
    objects,
    text,
    timestamp,
)
from memspan.sources.malloc_info import in_use

CURVE_METRICS = (
    names.PROCESS_MEMORY_USAGE,
    names.TORCH_ALLOCATED,
    names.TORCH_RESERVED,
    names.GPU_MEMORY_USAGE,
    names.CGROUP_MEMORY_USAGE,
    names.CGROUP_MEMORY_LIMIT,
)
RUN_SPAN = names.RUN_SPAN
ALL = "*"
UNKNOWN_SESSION = "unknown"
_SERVICE_SUFFIXES = (names.SERVICE_NAME, "service_name")


@dataclass
class SessionSummary:
    key: str
    first_ns: int | None = None
    last_ns: int | None = None
    spans: int = 0
    service: str | None = None
    host: str | None = None
    rank: int | None = None
    instance_ids: set[str] = field(default_factory=set)
    run: RunInfo | None = None

    def see(self, *times: int) -> None:
        for t in times:
            if t > 0:
                self.first_ns = t if self.first_ns is None else min(self.first_ns, t)
                self.last_ns = t if self.last_ns is None else max(self.last_ns, t)


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


def parts(path: str) -> list[str]:
    """The rotated older part first, then the file; only those that exist."""
    return [p for p in (path + ".1", path) if os.path.lexists(p)]


def _size(paths: list[str]) -> int:
    total = 0
    for p in paths:
        try:
            total += os.stat(p).st_size
        except OSError:
            pass
    return total


class Collector:
    """Routes spans and metric points to per-session models.

    ``wanted``: keys to build models for (``None``: every session, up to ``max_models``,
    evicting the least recently seen); ``merge``: one model (key ``*``) for everything.
    """

    def __init__(self, wanted: set[str] | None = None, merge: bool = False,
                 max_models: int = 8, max_sessions: int = 10_000, max_runs: int = 1000,
                 reader: LineReader | None = None) -> None:
        self.wanted = wanted
        self.merge = merge
        self.max_models = max_models
        self.max_sessions = max_sessions
        self.max_runs = max_runs
        self.reader = reader or LineReader()
        self.sessions: dict[str, SessionSummary] = {}
        self.models: dict[str, ReportModel] = {}
        self.evicted: set[str] = set()
        self.runs: list[RunInfo] = []
        self.sessions_dropped = 0
        self._by_instance: dict[str, list[str]] = {}
        self._batch = 0
        self._described: tuple[str, int] | None = None  # resource already applied to key

    # -- traces ----------------------------------------------------------------------------
    def read_traces(self, path: str) -> None:
        files = parts(path)
        progress = Progress(_size(files), "reading spans")
        for record in self.reader.records(files, progress.update):
            batches = record.get("resourceSpans")
            if not isinstance(batches, list):
                self.reader.skipped[WRONG_SHAPE] += 1
                continue
            for batch in objects(batches):
                resource = attributes(obj(batch.get("resource")).get("attributes"))
                self._batch += 1
                for scope_spans in objects(batch.get("scopeSpans")):
                    scope = obj(scope_spans.get("scope"))
                    version = text(scope.get("version"), 64) \
                        if scope.get("name") == names.INSTRUMENTATION_NAME else None
                    for span in items(scope_spans.get("spans")):
                        if not isinstance(span, dict) or not self._span(span, resource, version):
                            self.reader.skipped[WRONG_SHAPE] += 1
        progress.close()
        self._attach_runs()

    def _span(self, span: dict[str, Any], resource: dict[str, Any], version: str | None) -> bool:
        start = timestamp(span.get("startTimeUnixNano"))
        end = timestamp(span.get("endTimeUnixNano"))
        if start is None or end is None:
            return False
        attrs = attributes(span.get("attributes"))
        name = text(span.get("name"), 256) or ""
        if name == RUN_SPAN and names.PHASE_PATH not in attrs:
            self._run_span(span, attrs, resource, start, end)
            return True
        path = attrs.get(names.PHASE_PATH)
        events = objects(span.get("events"))
        if not isinstance(path, str) and not events:
            return True  # not ours: another instrumentation's span
        instance = resource.get(names.SERVICE_INSTANCE_ID)
        session_id = attrs.get(names.SESSION_ID)
        key = session_id if isinstance(session_id, str) and session_id else (
            instance if isinstance(instance, str) and instance else UNKNOWN_SESSION)
        fresh = self._described != (key, self._batch)  # a resource is applied once a batch
        self._described = (key, self._batch)
        summary = self._summary(key, resource if fresh else None)
        if summary is None:
            return True
        summary.see(start, end)
        if isinstance(path, str):
            summary.spans += 1
        model = self._model(key, summary)
        if model is None:
            return True
        if fresh:
            _describe(model, resource, version)
        model.see_time(start, end)
        for event in events:
            if event.get("name") == names.OOM_EVENT:
                event_attrs = attributes(event.get("attributes"))
                dump = event_attrs.get(names.OOM_DUMP_PATH)
                model.add_oom(OOMRecord(
                    timestamp(event.get("timeUnixNano")) or end,
                    str(event_attrs.get(names.OOM_KIND) or "unknown"),
                    path if isinstance(path, str) else name,
                    str(event_attrs.get(names.OOM_REASON) or ""),
                    local_path(dump),
                ))
        if isinstance(path, str):
            _add_phase(model, span, attrs, path, name, start, end, key)
        return True

    def _summary(self, key: str, resource: dict[str, Any] | None) -> SessionSummary | None:
        summary = self.sessions.get(key)
        if summary is None:
            if len(self.sessions) >= self.max_sessions:
                self.sessions_dropped += 1
                return None
            summary = self.sessions[key] = SessionSummary(key)
        if resource is None:
            return summary
        service = resource.get(names.SERVICE_NAME)
        summary.service = summary.service or (service if isinstance(service, str) else None)
        host = resource.get(names.HOST_NAME)
        summary.host = summary.host or (host if isinstance(host, str) else None)
        rank = resource.get(names.RANK)
        if summary.rank is None and isinstance(rank, int):
            summary.rank = rank
        instance = resource.get(names.SERVICE_INSTANCE_ID)
        if isinstance(instance, str) and instance and instance not in summary.instance_ids \
                and len(summary.instance_ids) < 8:
            summary.instance_ids.add(instance)
            keys = self._by_instance.setdefault(instance, [])
            if len(keys) < 64:
                keys.append(key)
        return summary

    def _model(self, key: str, summary: SessionSummary) -> ReportModel | None:
        if self.merge:
            key = ALL
        elif self.wanted is not None and key not in self.wanted:
            return None
        model = self.models.get(key)
        if model is not None:
            return model
        if key in self.evicted:
            return None
        if not self.merge and self.wanted is None and len(self.models) >= self.max_models:
            stale = min(self.models, key=lambda k: self.sessions[k].last_ns or 0)
            del self.models[stale]
            self.evicted.add(stale)
        model = self.models[key] = ReportModel(key=key)
        return model

    def _run_span(self, span: dict[str, Any], attrs: dict[str, Any], resource: dict[str, Any],
                  start: int, end: int) -> None:
        if len(self.runs) >= self.max_runs:
            self.runs.pop(0)
        service = None
        for key, value in attrs.items():
            if key.startswith(RUN_SPAN + ".") and key.endswith(_SERVICE_SUFFIXES) \
                    and isinstance(value, str) and value:
                service = value
        command = attrs.get(names.PROCESS_COMMAND_ARGS)
        if not isinstance(command, list):
            executable = (attrs.get(names.PROCESS_EXECUTABLE_NAME)
                          or attrs.get(names.PROCESS_COMMAND))
            command = [executable] if isinstance(executable, str) else []
        status = obj(span.get("status"))
        run = RunInfo(
            start, end, service=service,
            launcher_service=text(resource.get(names.SERVICE_NAME), 256),
            host=text(resource.get(names.HOST_NAME), 256),
            command=[str(c)[:512] for c in command if c is not None][:64],
            pid=integer(attrs.get(names.PROCESS_PID)),
            exit_code=integer(attrs.get(names.PROCESS_EXIT_CODE)),
            status_message=text(status.get("message"), 1024),
            peak_bytes=integer(attrs.get(names.RUN_PEAK_BYTES)),
            limit_bytes=integer(attrs.get(names.RUN_LIMIT_BYTES)),
            attributes={k: v for k, v in list(attrs.items())[:64]},
        )
        for event in objects(span.get("events")):
            if event.get("name") == names.OOM_EVENT:
                event_attrs = attributes(event.get("attributes"))
                dump = event_attrs.get(names.OOM_DUMP_PATH)
                run.oom = OOMRecord(
                    timestamp(event.get("timeUnixNano")) or end,
                    str(event_attrs.get(names.OOM_KIND) or "oom_killed"), "",
                    str(event_attrs.get(names.OOM_REASON) or ""),
                    local_path(dump), "run")
                confidence = event_attrs.get(names.OOM_CONFIDENCE)
                run.oom_confidence = confidence if isinstance(confidence, str) else None
        self.runs.append(run)

    def _attach_runs(self) -> None:
        """Give each run to the session that started inside it; a run alone is a session."""
        for run in self.runs:
            inside = [s for s in self.sessions.values() if s.first_ns is not None
                      and run.start_ns - 1_000_000_000 <= s.first_ns <= run.end_ns
                      and s.run is None]
            if run.service:
                inside = [s for s in inside if s.service == run.service] or inside
            if inside:
                chosen = min(inside, key=lambda s: s.first_ns or 0)
            else:
                key = f"run-{run.start_ns}"
                if key in self.sessions or len(self.sessions) >= self.max_sessions:
                    continue
                chosen = self.sessions[key] = SessionSummary(key, run.start_ns, run.end_ns)
                chosen.service = run.service
                chosen.host = run.host
            chosen.run = run
            model = self._model(chosen.key, chosen)
            if model is not None:
                model.see_time(run.start_ns, run.end_ns)
                if model.run is None:
                    model.run = run
                if run.oom is not None:
                    model.add_oom(run.oom)

    # -- metrics ---------------------------------------------------------------------------
    def read_metrics(self, path: str) -> None:
        files = parts(path)
        progress = Progress(_size(files), "reading metrics")
        for record in self.reader.records(files, progress.update):
            batches = record.get("resourceMetrics")
            if not isinstance(batches, list):
                self.reader.skipped[WRONG_SHAPE] += 1
                continue
            for batch in objects(batches):
                resource = attributes(obj(batch.get("resource")).get("attributes"))
                instance = resource.get(names.SERVICE_INSTANCE_ID)
                keys = self._by_instance.get(instance, []) if isinstance(instance, str) \
                    else [UNKNOWN_SESSION] if UNKNOWN_SESSION in self.sessions else []
                if not keys and not self.merge:
                    continue
                for scope_metrics in objects(batch.get("scopeMetrics")):
                    for metric in items(scope_metrics.get("metrics")):
                        if not isinstance(metric, dict):
                            self.reader.skipped[WRONG_SHAPE] += 1
                            continue
                        self._metric(metric, keys)
        progress.close()

    def _metric(self, metric: dict[str, Any], keys: list[str]) -> None:
        name = metric.get("name")
        if name not in CURVE_METRICS:
            return
        data = obj(metric.get("sum")) or obj(metric.get("gauge"))
        for point in items(data.get("dataPoints")):
            point = obj(point)
            value = number(point.get("asInt", point.get("asDouble")))
            time_ns = timestamp(point.get("timeUnixNano"))
            if value is None or time_ns is None or time_ns <= 0:
                self.reader.skipped[WRONG_SHAPE] += 1
                continue
            model = self._metric_model(keys, time_ns)
            if model is None:
                continue
            point_attrs = attributes(point.get("attributes"))
            label = point_attrs.get(names.MEMORY_DEVICE) or point_attrs.get(names.HW_ID)
            key = f"{name} [{label}]" if isinstance(label, str) and label else str(name)
            model.see_time(time_ns)
            model.curve(key).add(time_ns, value)

    def _metric_model(self, keys: list[str], time_ns: int) -> ReportModel | None:
        if self.merge:
            return self.models.get(ALL)
        candidates = [k for k in keys if k in self.models]
        if not candidates:
            return None
        if len(candidates) > 1:  # several trackers in one process: the one active then
            started = [k for k in candidates
                       if (self.sessions[k].first_ns or 0) <= time_ns + 1_000_000_000]
            candidates = started or candidates
            candidates.sort(key=lambda k: self.sessions[k].first_ns or 0)
        return self.models[candidates[-1]]


def local_path(value: Any) -> str | None:
    """The resolved absolute path of a path string from the input; ``None`` if unusable."""
    if not isinstance(value, str) or not value or len(value) > 4096 or "\x00" in value:
        return None
    try:
        return os.path.realpath(value)
    except (OSError, ValueError):
        return None


def _describe(model: ReportModel, resource: dict[str, Any], version: str | None) -> None:
    """Run metadata from the resource (the first value seen wins)."""
    def first(current: Any, value: Any) -> Any:
        return current if current is not None else (value if isinstance(value, str) else None)
    model.service = first(model.service, resource.get(names.SERVICE_NAME))
    model.host = first(model.host, resource.get(names.HOST_NAME))
    model.environment = first(model.environment, resource.get("deployment.environment.name"))
    model.environment = first(model.environment, resource.get("deployment.environment"))
    model.memspan_version = model.memspan_version or version
    rank = resource.get(names.RANK)
    if model.rank is None and isinstance(rank, int):
        model.rank = rank
    instance = resource.get(names.SERVICE_INSTANCE_ID)
    if isinstance(instance, str) and len(model.instance_ids) < 8:
        model.instance_ids.add(instance)
    pid = resource.get(names.PROCESS_PID)
    if model.pid is None and isinstance(pid, int):
        model.pid = pid
    command = resource.get(names.PROCESS_COMMAND_ARGS)
    if not model.command and isinstance(command, list):
        model.command = [str(c)[:512] for c in command[:64]]


def _add_phase(model: ReportModel, span: dict[str, Any], attrs: dict[str, Any], path: str,
               name: str, start: int, end: int, session: str = "") -> None:
    model.spans_read += 1
    depth = attrs.get(names.PHASE_DEPTH)
    depth = depth if type(depth) is int and 0 < depth < 10_000 else 1
    status = span.get("status")
    error = type(status) is dict and integer(status.get("code")) == 2
    model.add_timeline(TimelineSpan(max(0, end - start), start, end, name[:256], path[:4096],
                                    depth, error))
    device = attrs.get(names.MEMORY_DEVICE)
    device = device[:64] if isinstance(device, str) and device else "host"
    if device != "host" and type(attrs.get(names.ALLOCATED_START)) is int:
        keys = (names.ALLOCATED_PEAK, names.ALLOCATED_START, names.ALLOCATED_END)
        label = f"allocated at phase edges [{device}]"
    else:
        keys = (names.RSS_PEAK, names.RSS_START, names.RSS_END)
        label = "RSS at phase edges"
    peak, first, last = (value if type(value) is int else None
                         for value in (attrs.get(k) for k in keys))
    # Phase-edge readings draw a curve even for a job shorter than one metric export.
    if first is not None and last is not None:
        curve = model.curve(label)
        curve.add(start, float(first))
        curve.add(end, float(last))
        if peak is not None and peak > max(first, last):
            curve.add(start + (end - start) // 2, float(peak))
        if model.step_device in (None, device):
            model.step_device = device
            model.steps.add(start, float(last))
            if model.steps_first is None or start < model.steps_first[0]:
                model.steps_first = (start, float(first))
    stats = model.path_stats(path[:4096], depth)
    if stats is None:
        return
    stats.device = device
    stats.add((end - start) / 1e9, peak, first, last)
    if first is not None and last is not None:
        # a peak not flagged as sampled (``peak_exact`` false) is taken as exact
        sampled = attrs.get(names.PEAK_EXACT) is False
        added = peak - first if peak is not None and not sampled else None
        if keys[1] == names.RSS_START:  # on a host the level is RSS less the allocator's free
            first = in_use(first, _figure(attrs, names.MALLOC_FREE_START))
            last = in_use(last, _figure(attrs, names.MALLOC_FREE_END))
        model.attribution.add(FinishedRun(path[:4096], first, last, added, session))


def _figure(attrs: dict[str, Any], key: str) -> int | None:
    value = attrs.get(key)
    return value if type(value) is int and value >= 0 else None
