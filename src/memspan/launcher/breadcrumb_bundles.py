"""Turn breadcrumb files left by dead processes into ordinary dump bundles.

A breadcrumb whose process is still alive is left alone. A corrupt or partial file (a line
cut by the SIGKILL, garbage) still becomes a bundle: unreadable lines are skipped and counted
in the bundle's metadata. The breadcrumb is removed only once its bundle exists.
"""

from __future__ import annotations

import dataclasses
import os
import re
from datetime import datetime, timezone
from typing import Any

from memspan.launcher.exit_classify import ProcessExitClassification
from memspan.oom.breadcrumbs import DIRECTORY, read_breadcrumb
from memspan.oom.bundle import BundleContent, bundle_name, write_bundle
from memspan.oom.recorder import environment_report
from memspan.oom.retention import prune

_NAME = re.compile(r"^r(\d+)_p(\d+)\.jsonl$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def open_phases(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replay phase boundaries: the phases still open when the events stop."""
    stack: list[dict[str, Any]] = []
    for event in events:
        if event.get("type") == "phase_start":
            stack.append({"path": event.get("path"), "scope_id": event.get("scope_id"),
                          "name": str(event.get("path", "")).rsplit(" / ", 1)[-1]})
        elif event.get("type") == "phase_end":
            scope = event.get("scope_id")
            for index in range(len(stack) - 1, -1, -1):
                if stack[index]["scope_id"] == scope:
                    del stack[index:]
                    break
    return stack


def bundles_from_breadcrumbs(dump_dir: str, classification: ProcessExitClassification, *,
                             max_dumps: int, max_total_mb: int) -> list[str]:
    directory = os.path.join(dump_dir, DIRECTORY)
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    written: list[str] = []
    for name in names:
        match = _NAME.match(name)
        if match is None:
            continue
        rank, pid = int(match.group(1)), int(match.group(2))
        if _alive(pid):
            continue
        path = os.path.join(directory, name)
        try:
            header, events, bad_lines = read_breadcrumb(path)
        except OSError:
            continue
        stack = open_phases(events)
        samples = [e for e in events if e.get("type") == "sample"]
        bundle = bundle_name(rank, pid, 0)
        manifest = {
            "created_at_utc": datetime.now(timezone.utc).isoformat(),
            "reason": classification.reason,
            "kind": classification.kind or "crash",
            "backend": "process",
            "trace_id": None,
            "span_id": None,
            "phase_path": stack[-1]["path"] if stack else None,
            "scope_id": stack[-1]["scope_id"] if stack else None,
            "session_id": (header or {}).get("session_id"),
            "rank": rank,
            "pid": pid,
            "source": "breadcrumb",
        }
        content = BundleContent(
            manifest=manifest,
            metadata={"exit": dataclasses.asdict(classification), "breadcrumb_header": header,
                      "corrupt_lines": bad_lines, "context": "process exit"},
            phases=stack,
            memory={"last_sample": samples[-1] if samples else None},
            environment=environment_report(),
            traceback_text="(no traceback: the process was killed)\n",
            events=events,
        )
        try:
            written.append(write_bundle(dump_dir, bundle, content))
        except (OSError, MemoryError):
            continue
        try:
            os.unlink(path)
        except OSError:
            pass
    if written:
        prune(dump_dir, max_dumps=max_dumps, max_total_bytes=max_total_mb * 1024 * 1024,
              keep=written[-1])
    return written
