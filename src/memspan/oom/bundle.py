"""Writing one OOM dump bundle: complete or absent, private, within a size and time budget.

Layout (see ``docs/telemetry.md``): ``<dump_dir>/<YYYYMMDDTHHMMSSZ>_<host>_r<rank>_p<pid>_<seq>/``
with ``manifest.json``, ``events.jsonl``, ``metadata.json``, ``phases.json``,
``memory.json``, ``environment.json``, ``traceback.txt`` and, when memory history was
recorded, ``cuda_snapshot.pickle``.

Invariants:

- The bundle is written into a hidden temporary sibling (``.tmp-...``) and renamed into
  place, so a reader (or a retention pass) never sees a partial bundle. A writer killed
  mid-way leaves only a ``.tmp-`` directory, which no bundle listing counts.
- Directories are created 0700 and files 0600: a bundle can hold tensor shapes, paths and
  environment values that are nobody else's business.
- ``events.jsonl`` is streamed one event at a time and stops at the byte or time budget; the
  manifest says how many events were written and whether the list was cut.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from memspan.environment_variables import bundle_allowlist
from memspan.safe_files import ensure_directory

SCHEMA_VERSION = 1
#: the most bytes of ``events.jsonl`` one bundle holds (the events after it are cut, counted
#: in the manifest's ``events_truncated``)
MAX_EVENTS_FILE_BYTES = 64 << 20
#: the files of a bundle, in the order a reader wants them
BUNDLE_FILES = ("manifest.json", "events.jsonl", "metadata.json", "phases.json",
                "memory.json", "environment.json", "traceback.txt")
CUDA_SNAPSHOT_FILE = "cuda_snapshot.pickle"
BUNDLE_NAME = re.compile(r"^(\d{8}T\d{6}Z)_([A-Za-z0-9.-]{1,64})_r(\d+)_p(\d+)_(\d+)$")
#: derived from the declarations in memspan.environment_variables (no URLs: they can carry
#: credentials)
ENV_ALLOWLIST = bundle_allowlist()


@dataclass
class BundleContent:
    """Everything one bundle holds; ``events`` may be any iterable (it is streamed)."""

    manifest: dict[str, Any]
    metadata: dict[str, Any]
    phases: list[dict[str, Any]]
    memory: dict[str, Any]
    environment: dict[str, Any]
    traceback_text: str
    events: Iterable[Mapping[str, Any]] = field(default_factory=list)
    cuda_snapshot: bytes | None = None


def sanitize_host(host: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9.-]", "-", host)[:64].strip(".-")
    return cleaned or "host"


def bundle_name(rank: int, pid: int, sequence: int, now: float | None = None,
                host: str | None = None) -> str:
    stamp = datetime.fromtimestamp(time.time() if now is None else now, timezone.utc)
    return (f"{stamp:%Y%m%dT%H%M%SZ}_{sanitize_host(host or socket.gethostname())}"
            f"_r{rank}_p{pid}_{sequence}")


def allowed_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    env = os.environ if environ is None else environ
    return {key: env[key] for key in ENV_ALLOWLIST if key in env}


def _write_file(directory: str, name: str, data: bytes) -> None:
    fd = os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    finally:
        os.close(fd)


def _json(value: Any) -> bytes:
    return json.dumps(value, indent=2, default=str, sort_keys=False).encode("utf-8")


def _stream_events(directory: str, events: Iterable[Mapping[str, Any]], max_bytes: int,
                   deadline: float) -> tuple[int, bool, int]:
    """Write events.jsonl; return (events written, cut short?, bytes)."""
    count = 0
    size = 0
    cut = False
    fd = os.open(os.path.join(directory, "events.jsonl"), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as handle:
            for event in events:
                line = json.dumps(event, default=str, separators=(",", ":")) + "\n"
                if size + len(line) > max_bytes or time.monotonic() > deadline:
                    cut = True
                    break
                handle.write(line)
                size += len(line)
                count += 1
    finally:
        os.close(fd)
    return count, cut, size


def write_bundle(dump_dir: str, name: str, content: BundleContent, *,
                 max_events_file_bytes: int = MAX_EVENTS_FILE_BYTES,
                 time_budget_s: float = 10.0) -> str:
    """Write the bundle atomically and return its absolute path (raises on failure)."""
    ensure_directory(dump_dir, own_name=False)  # created 0700, parents included
    final = os.path.abspath(os.path.join(dump_dir, name))
    temporary = os.path.join(os.path.dirname(final), f".tmp-{name}-{secrets.token_hex(4)}")
    os.mkdir(temporary, 0o700)
    try:
        deadline = time.monotonic() + time_budget_s
        count, cut, _ = _stream_events(temporary, content.events, max_events_file_bytes,
                                       deadline)
        files = list(BUNDLE_FILES)
        _write_file(temporary, "metadata.json", _json(content.metadata))
        _write_file(temporary, "phases.json", _json(content.phases))
        _write_file(temporary, "memory.json", _json(content.memory))
        _write_file(temporary, "environment.json", _json(content.environment))
        _write_file(temporary, "traceback.txt", content.traceback_text.encode("utf-8", "replace"))
        if content.cuda_snapshot is not None:
            _write_file(temporary, CUDA_SNAPSHOT_FILE, content.cuda_snapshot)
            files.append(CUDA_SNAPSHOT_FILE)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "bundle_name": name,
            **content.manifest,
            "event_count": count,
            "events_truncated": cut,
            "files": files,
        }
        _write_file(temporary, "manifest.json", _json(manifest))
        os.rename(temporary, final)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return final
