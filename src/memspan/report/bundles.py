"""The OOM bundles that belong to a report's session, each once, with an absolute path.

A bundle belongs to a session when its manifest names the session (``session_id``), or,
for bundles made by ``memspan run`` from breadcrumbs, the child's pid; with ``--all`` every
bundle belongs. Manifests are read as small regular files only (a FIFO or ``/dev/zero``
planted as ``manifest.json`` is skipped and counted, never read).
"""

from __future__ import annotations

import os

from memspan.oom.retention import list_bundles
from memspan.report.lines import InputError, read_small_json
from memspan.report.model import OOMRecord, ReportModel

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
        model.add_oom(OOMRecord(
            _bundle_time(entry.name),
            str(manifest.get("kind") or "unknown")[:128],
            phase[:4096] if isinstance(phase, str) else "",
            str(manifest.get("reason") or "")[:1024],
            path, "bundle"))
    return unreadable


def _bundle_time(name: str) -> int:
    """Nanoseconds since the epoch from the bundle name's ``YYYYmmddTHHMMSSZ`` (0 if not)."""
    from datetime import datetime, timezone

    try:
        moment = datetime.strptime(name[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return 0
    return int(moment.timestamp()) * 1_000_000_000
