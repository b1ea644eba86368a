"""The OOM bundles that belong to a report's session, each once, with an absolute path.

A bundle belongs to a session when its manifest names the session (``session_id``), or,
for bundles made by ``memspan run`` from breadcrumbs, the child's pid; with ``--all`` every
bundle belongs. Manifests are read as small regular files only (a FIFO or ``/dev/zero``
planted as ``manifest.json`` is skipped and counted, never read).
"""

from __future__ import annotations

import os

from memspan import names
from memspan.analysis.attribution import FinishedRun
from memspan.names import EventType
from memspan.oom.bundle import BUNDLE_NAME
from memspan.oom.retention import list_bundles
from memspan.report.lines import InputError, LineReader, read_small_json
from memspan.report.model import OOMRecord, ReportModel, TimelineSpan
from memspan.report.otlp import integer, number, obj

EVENTS = "events.jsonl"
MAX_EVENTS = 200_000

MANIFEST = "manifest.json"


def attach_bundles(dump_dir: str, model: ReportModel, session_key: str | None,
                   limit: int = 200) -> int:
    """Add this session's bundles to ``model.ooms``; return how many could not be read."""
    unreadable = 0
    try:
        entries = list_bundles(dump_dir)
    except OSError:
        return 0
    pid = model.run.pid if model.run is not None else model.pid
    for entry in entries[-limit:]:
        path = os.path.realpath(entry.path)
        try:
            manifest = read_small_json(os.path.join(path, MANIFEST))
        except InputError:
            unreadable += 1
            manifest = None
        if not isinstance(manifest, dict):
            if manifest is not None:
                unreadable += 1
            if session_key is not None:
                continue
            manifest = {}
        if session_key is not None:
            same_session = manifest.get("session_id") == session_key
            same_pid = pid is not None and manifest.get("pid") == pid and \
                not isinstance(manifest.get("pid"), bool)
            if not (same_session or same_pid):
                continue
        phase = manifest.get("phase_path")
        named = BUNDLE_NAME.match(entry.name)
        if model.host is None and named is not None:
            model.host = named.group(2)  # the bundle's name carries the host it was written on
        model.add_oom(OOMRecord(
            _bundle_time(entry.name),
            str(manifest.get("kind") or "unknown")[:128],
            phase[:4096] if isinstance(phase, str) else "",
            str(manifest.get("reason") or "")[:1024],
            path, "bundle"))
        if model.spans_read == 0 and session_key is not None:
            unreadable += replay_events(os.path.join(path, EVENTS), model)
    return unreadable


def replay_events(path: str, model: ReportModel) -> int:
    """Fill a session that exported no span (a SIGKILLed job) from its bundle's ring events.

    Phase ends become phase runs (start figure = end - retained), samples become curves.
    Bounded: lines of at most 1 MiB, at most ``MAX_EVENTS`` events. Returns 1 if the file
    could not be read, else 0 (bad lines are skipped).
    """
    reader = LineReader(max_line_bytes=1 << 20)
    starts: dict[str, int] = {}
    try:
        for count, event in enumerate(reader.records([path], lambda _: None)):
            if count >= MAX_EVENTS:
                break
            seconds = number(event.get("ts"))
            if seconds is None or not 0 < seconds < 9e9:
                continue
            time_ns = int(seconds * 1e9)
            kind = event.get("type")
            if kind == EventType.SAMPLE.value:
                for name, value in obj(event.get("values")).items():
                    figure = number(value)
                    if figure is not None and isinstance(name, str) and (
                            name.startswith(names.PROCESS_MEMORY_USAGE) or "allocated" in name):
                        model.see_time(time_ns)
                        model.curve(f"{name[:128]} (breadcrumbs)").add(time_ns, figure)
            elif kind == EventType.PHASE_START.value:
                scope = event.get("scope_id")
                if isinstance(scope, str) and len(starts) < 10_000:
                    starts[scope] = time_ns
            elif kind == EventType.PHASE_END.value:
                _phase_end(event, time_ns, starts, model)
    except InputError:
        return 1
    return 0


def _phase_end(event: dict[str, object], time_ns: int, starts: dict[str, int],
               model: ReportModel) -> None:
    path = event.get("path")
    if not isinstance(path, str):
        return
    duration = number(event.get("duration_s")) or 0.0
    scope = event.get("scope_id")
    start_ns = starts.pop(scope, None) if isinstance(scope, str) else None
    start_ns = start_ns or time_ns - int(duration * 1e9)
    allocated = integer(event.get("allocated"))
    end: int | None = allocated if allocated is not None else integer(event.get("rss"))
    peak = integer(event.get("allocated_peak" if allocated is not None else "rss_peak"))
    retained = integer(event.get("retained"))
    begin = end - retained if end is not None and retained is not None else None
    model.see_time(start_ns, time_ns)
    depth = path.count(" / ") + 1
    model.add_timeline(TimelineSpan(max(0, time_ns - start_ns), start_ns, time_ns,
                                    path.rsplit(" / ", 1)[-1][:256], path[:4096], depth, False))
    if begin is not None and end is not None:
        curve = model.curve("RSS at phase edges (breadcrumbs)" if allocated is None
                            else "allocated at phase edges (breadcrumbs)")
        curve.add(start_ns, float(begin))
        curve.add(time_ns, float(end))
        model.steps.add(start_ns, float(end))
        if model.steps_first is None or start_ns < model.steps_first[0]:
            model.steps_first = (start_ns, float(begin))
    stats = model.path_stats(path[:4096], depth)
    if stats is not None:
        stats.add(duration, peak, begin, end)
        if begin is not None and end is not None:  # a ring event does not say if a peak is exact
            model.attribution.add(FinishedRun(path[:4096], begin, end))
    model.phases_from_breadcrumbs += 1


def _bundle_time(name: str) -> int:
    """Nanoseconds since the epoch from the bundle name's ``YYYYmmddTHHMMSSZ`` (0 if not)."""
    from datetime import datetime, timezone

    try:
        moment = datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return 0
    return int(moment.timestamp()) * 1_000_000_000
