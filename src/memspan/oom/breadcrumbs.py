"""Breadcrumbs: the ring buffer on disk, so a SIGKILLed process still leaves evidence.

A process killed by the kernel's OOM killer cannot write anything. While it lives, the
recorder appends new ring events to ``<dump_dir>/.breadcrumbs/r<rank>_p<pid>.jsonl``
periodically and on phase boundaries, at most every ``min_interval_s``. The ``memspan run``
launcher turns a file left behind into a bundle.

Invariants: the file starts with one header line (``type: breadcrumb_header``) naming the
process; appends are whole lines on an ``O_APPEND`` descriptor; when the file would exceed
``max_bytes`` it is rewritten (atomically) with the header and the current ring only, so it
stays bounded; a clean shutdown removes it; a forked child writes none. Failures are
counted, never raised.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from memspan.drops import BREADCRUMB_ERROR, DropLedger
from memspan.oom.ring import EventRing

HEADER_TYPE = "breadcrumb_header"
DIRECTORY = ".breadcrumbs"


def breadcrumb_path(dump_dir: str, rank: int, pid: int) -> str:
    return os.path.join(dump_dir, DIRECTORY, f"r{rank}_p{pid}.jsonl")


class BreadcrumbWriter:
    def __init__(self, path: str, ring: EventRing, header: dict[str, Any], *,
                 ledger: DropLedger, max_bytes: int = 4 << 20,
                 min_interval_s: float = 0.2) -> None:
        self.path = path
        self._ring = ring
        self._header = {"type": HEADER_TYPE, **header}
        self._ledger = ledger
        self.max_bytes = max_bytes
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._last_sequence = 0
        self._last_flush = 0.0
        self._size = 0
        self._started = False
        self._pid = os.getpid()

    def flush(self, *, force: bool = False) -> None:
        if os.getpid() != self._pid:
            # A forked child (a DataLoader worker) must not write into its parent's file, and
            # it usually ends with os._exit, which would leave a file of its own behind.
            return
        now = time.monotonic()
        if not force and now - self._last_flush < self.min_interval_s:
            return
        if not self._lock.acquire(blocking=force):
            return  # another thread is flushing: single-flight
        try:
            self._last_flush = now
            if not self._started:
                self._rewrite()
                self._started = True
                return
            events = self._ring.since(self._last_sequence)
            if not events:
                return
            data = "".join(json.dumps(e, default=str, separators=(",", ":")) + "\n"
                           for e in events).encode("utf-8")
            if self._size + len(data) > self.max_bytes:
                self._rewrite()
                return
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
            self._size += len(data)
            self._last_sequence = events[-1]["seq"]
        except OSError as error:
            self._ledger.add(BREADCRUMB_ERROR, warning=f"breadcrumb write failed: {error}")
        finally:
            self._lock.release()

    def _rewrite(self) -> None:
        events = self._ring.snapshot()
        lines = [json.dumps(self._header, default=str, separators=(",", ":"))]
        lines.extend(json.dumps(e, default=str, separators=(",", ":")) for e in events)
        data = ("\n".join(lines) + "\n").encode("utf-8")
        while len(data) > self.max_bytes and len(lines) > 1:  # keep the newest that fit
            lines = [lines[0], *lines[1 + max(1, (len(lines) - 1) // 4):]]
            data = ("\n".join(lines) + "\n").encode("utf-8")
        os.makedirs(os.path.dirname(self.path), mode=0o700, exist_ok=True)
        temporary = f"{self.path}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        self._size = len(data)
        self._last_sequence = events[-1]["seq"] if events else self._ring.last_sequence

    def remove(self) -> None:
        if os.getpid() != self._pid:
            return
        with self._lock:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as error:
                self._ledger.add(BREADCRUMB_ERROR, warning=f"breadcrumb removal failed: {error}")


def read_breadcrumb(path: str) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    """The header, the events, and how many lines could not be parsed (corrupt/partial)."""
    header: dict[str, Any] | None = None
    events: list[dict[str, Any]] = []
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if not isinstance(record, dict):
                bad += 1
            elif record.get("type") == HEADER_TYPE and header is None:
                header = record
            else:
                events.append(record)
    return header, events, bad
