"""Breadcrumbs: the ring buffer on disk, so a SIGKILLed process still leaves evidence.

A process killed by the kernel's OOM killer cannot write anything. While it lives, the
recorder appends new ring events to ``<dump_dir>/.breadcrumbs/r<rank>_p<pid>.jsonl``. The
``memspan run`` launcher turns a file left behind into a bundle.

The open phase stack is not taken from this file when it can be helped: each phase edge
also goes, synchronously and without a system call, into the stack file beside it
(:mod:`memspan.oom.breadcrumb_stack`, through :meth:`BreadcrumbWriter.phase_opened` and
:meth:`BreadcrumbWriter.phase_closed` on the caller's thread), with the phase's user
attributes; the launcher rebuilds the stack by scope id from it. This file is the history
(samples, phase ends with figures, OOM events).

When a flush writes (the hot path calls :meth:`BreadcrumbWriter.flush` after recording an
event; the call signature is unchanged):

- the first flush writes the file (header and the ring so far); so does the first phase
  start, with the stack file;
- a flush whose new events include an OOM-related event writes at once; so does one with a
  ``phase_start`` when there is no stack file (it could not be made: then the starts in this
  file are the only record of the open stack);
- anything else (``phase_end``, samples) at most every ``min_interval_s`` (the sampler
  flushes about every 0.1 s, so a phase end is on disk within ``min_interval_s``), and
  with the next phase start; ``force=True`` always writes.

Cost of a write (about 10 µs): the new events encoded with one cached encoder, one
``openat`` (relative to a held directory descriptor), one ``write`` of the new lines on an
``O_APPEND`` descriptor, one ``close``; no fsync (the page cache survives the death of the
process, which is the failure this guards against). A throttled flush costs one
``EventRing.since`` call.

Invariants:

- The file starts with one header line (``type: breadcrumb_header``, with ``started_at`` so
  a launcher can tell an earlier run's file from this run's); appends are whole lines.
- When the file would exceed ``max_bytes`` it is rewritten with the header and the current
  ring only, through an exclusive temporary (``O_CREAT|O_EXCL|O_NOFOLLOW``) renamed into
  place, so it stays bounded and a planted symlink is never followed.
- ``.breadcrumbs`` must be a real directory owned by the current user (see
  :mod:`memspan.safe_files`); one that is a symlink or somebody else's is refused, warned
  about once and counted as ``breadcrumb_error``. Directories are created ``0700``.
- If the directory (or the dump directory) is deleted while the process runs, the next
  write recreates it (``0700``) and rewrites the file.
- A clean shutdown removes the file and its stack file; a forked child writes none.
  Failures are counted, never raised.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from memspan.drops import BREADCRUMB_ERROR, DropLedger
from memspan.names import EventType
from memspan.oom.breadcrumb_stack import OpenStackWriter, stack_name
from memspan.oom.ring import EventRing
from memspan.safe_files import (
    UnsafePathError,
    open_directory,
    read_regular_file,
    replace_file,
    unlink_in,
    write_all,
)

if TYPE_CHECKING:
    from memspan.phases.record import PhaseSpan

HEADER_TYPE = "breadcrumb_header"
DIRECTORY = ".breadcrumbs"
#: The most a launcher reads back from one breadcrumb file (the writer keeps it well below).
MAX_READ_BYTES = 16 << 20
#: Longest line kept when a breadcrumb is read back (longer ones count as corrupt).
MAX_LINE_BYTES = 1 << 20
_URGENT_WITH_STACK = frozenset({EventType.OOM.value, EventType.ALLOCATOR_OOM.value,
                                EventType.CGROUP_OOM_KILL.value})
_URGENT = _URGENT_WITH_STACK | {EventType.PHASE_START.value}
_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))
_APPEND_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def breadcrumb_path(dump_dir: str, rank: int, pid: int) -> str:
    return os.path.join(dump_dir, DIRECTORY, f"r{rank}_p{pid}.jsonl")


def _line(record: Any) -> str:
    return _ENCODER.encode(record)


class BreadcrumbWriter:
    def __init__(self, path: str, ring: EventRing, header: dict[str, Any], *,
                 ledger: DropLedger, max_bytes: int = 4 << 20,
                 min_interval_s: float = 0.2) -> None:
        self.path = path
        self._directory = os.path.dirname(os.path.abspath(path))
        self._name = os.path.basename(path)
        self._ring = ring
        self._header = {"type": HEADER_TYPE, **header}
        self._header.setdefault("started_at", time.time())
        self._ledger = ledger
        self.max_bytes = max_bytes
        self.min_interval_s = min_interval_s
        self._lock = threading.Lock()
        self._last_sequence = 0
        self._last_flush = 0.0
        self._size = 0
        self._started = False
        self._dir_fd: int | None = None
        self._refused = False
        self._dirty = False
        self._pid = os.getpid()
        self._stack: OpenStackWriter | None = None
        self._stack_failed = False
        self._stack_name = stack_name(self._name)

    # -- the open stack (caller's thread) ----------------------------------------------------
    def phase_opened(self, phase: PhaseSpan) -> bool:
        """Put ``phase`` into the stack file (made at the first call, with this file's first
        write); False when there is no stack file or no free slot, so the caller must get the
        start on disk through :meth:`flush` instead."""
        stack = self._stack
        if stack is None:
            stack = self._open_stack()
            if stack is None:
                return False
        overflow = stack.overflow
        stack.opened(phase)
        return stack.overflow == overflow and stack.live and self._stack_in_place()

    def _stack_in_place(self) -> bool:
        """Whether the stack file is still where the launcher looks (one ``fstatat``, under
        a microsecond): when the dump directory was deleted under the job, the start just
        written went into an unlinked file, and the caller's flush puts both back."""
        dir_fd = self._dir_fd
        if dir_fd is None:
            return False
        try:
            os.stat(self._stack_name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            return False
        return True

    def phase_closed(self, phase: PhaseSpan) -> None:
        """Turn ``phase``'s slot in the stack file into its closed record."""
        stack = self._stack
        if stack is not None:
            stack.closed(phase)

    def _open_stack(self) -> OpenStackWriter | None:
        """Make the stack file, after this file's first write (so the launcher finds the
        header beside it); a failure is counted once and leaves the starts to :meth:`flush`."""
        if self._stack_failed or self._refused or os.getpid() != self._pid:
            return None
        with self._lock:
            if self._stack is not None or self._stack_failed or self._refused:
                return self._stack
            try:
                if not self._started:
                    self._last_flush = time.monotonic()
                    self._write_whole()
                self._stack = OpenStackWriter.create(self._directory_fd(), self._stack_name)
            except UnsafePathError as error:
                self._refused = True
                self._stack_failed = True
                self._close_directory()
                self._ledger.add(BREADCRUMB_ERROR, warning=f"breadcrumbs disabled: {error}")
            except (OSError, ValueError) as error:
                self._stack_failed = True
                self._close_directory()
                self._ledger.add(BREADCRUMB_ERROR,
                                 warning=f"the breadcrumb stack file failed: {error}")
        return self._stack

    def flush(self, *, force: bool = False) -> None:
        """Write what the ring recorded since the last write (see the module docstring).

        Single-flight: a call that finds another thread flushing returns at once, after
        marking the writer dirty; the flushing thread then looks again after releasing the
        lock, so an urgent event recorded meanwhile is never left waiting.
        """
        if os.getpid() != self._pid or self._refused:
            # A forked child (a DataLoader worker) must not write into its parent's file, and
            # it usually ends with os._exit, which would leave a file of its own behind.
            return
        self._dirty = True
        for _ in range(3):
            if not self._lock.acquire(blocking=force):
                return  # the thread holding the lock sees _dirty and looks again
            try:
                self._dirty = False
                self._flush_locked(force)
            finally:
                self._lock.release()
            if not self._dirty or self._refused:
                return
            force = False

    def _flush_locked(self, force: bool) -> None:
        try:
            now = time.monotonic()
            if not self._started:
                self._last_flush = now
                self._write_whole()
                return
            events = self._ring.since(self._last_sequence)
            if not events:
                return
            urgent = _URGENT if self._stack is None else _URGENT_WITH_STACK
            if not force and now - self._last_flush < self.min_interval_s and not any(
                    event.get("type") in urgent for event in events):
                return
            self._last_flush = now
            data = "".join(_line(e) + "\n" for e in events).encode("utf-8")
            if self._size + len(data) > self.max_bytes or not self._append(data):
                self._write_whole()
                return
            self._size += len(data)
            self._last_sequence = events[-1]["seq"]
        except UnsafePathError as error:
            self._refused = True  # never retried: the directory is not ours
            self._close_directory()
            self._ledger.add(BREADCRUMB_ERROR, warning=f"breadcrumbs disabled: {error}")
        except OSError as error:
            self._close_directory()
            self._ledger.add(BREADCRUMB_ERROR, warning=f"breadcrumb write failed: {error}")

    def _directory_fd(self) -> int:
        if self._dir_fd is None:
            parent = os.path.dirname(self._directory)
            # The dump directory is the user's (it may be their symlink); .breadcrumbs is ours.
            os.close(open_directory(parent, own_name=False))
            self._dir_fd = open_directory(self._directory, own_name=True)
        return self._dir_fd

    def _close_directory(self) -> None:
        if self._dir_fd is not None:
            try:
                os.close(self._dir_fd)
            except OSError:
                pass
            self._dir_fd = None

    def _append(self, data: bytes) -> bool:
        """Append to the existing file; False when it (or its directory) has gone, or when
        something that is not our file (a symlink) took its place: the caller rewrites."""
        try:
            fd = os.open(self._name, _APPEND_FLAGS, dir_fd=self._directory_fd())
        except FileNotFoundError:
            return False
        except OSError as error:
            if error.errno in (errno.ELOOP, errno.ENXIO):  # a symlink, a FIFO without reader
                return False
            raise
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        return True

    def _write_whole(self) -> None:
        """Header and the current ring, through an exclusive temporary renamed into place."""
        events = self._ring.snapshot()
        lines = [_line(self._header)]
        lines.extend(_line(e) for e in events)
        data = ("\n".join(lines) + "\n").encode("utf-8")
        while len(data) > self.max_bytes and len(lines) > 1:  # keep the newest that fit
            lines = [lines[0], *lines[1 + max(1, (len(lines) - 1) // 4):]]
            data = ("\n".join(lines) + "\n").encode("utf-8")
        for attempt in range(2):
            try:
                replace_file(self._name, data, dir_fd=self._directory_fd())
                break
            except FileNotFoundError:
                # The directory was deleted under us: recreate it (0700) once and retry.
                self._close_directory()
                if attempt:
                    raise
            except UnsafePathError:
                self._close_directory()
                raise
        stack = self._stack
        if stack is not None and stack.live and self._started:
            try:  # deleted with its directory (or alone): put it back, mapped anew
                os.stat(self._stack_name, dir_fd=self._directory_fd(), follow_symlinks=False)
            except FileNotFoundError:
                stack.move_to(self._directory_fd(), self._stack_name)
        self._started = True
        self._size = len(data)
        self._last_sequence = events[-1]["seq"] if events else self._ring.last_sequence

    def remove(self) -> None:
        if os.getpid() != self._pid:
            return
        with self._lock:
            try:
                if self._stack is not None:
                    self._stack.close()
                    unlink_in(self._directory_fd(), self._stack_name)
                if self._started:
                    unlink_in(self._directory_fd(), self._name)
            except OSError as error:
                self._ledger.add(BREADCRUMB_ERROR, warning=f"breadcrumb removal failed: {error}")
            finally:
                self._close_directory()


def parse_breadcrumb(data: bytes) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    """The header, the events, and how many lines could not be parsed (corrupt/partial).

    Total function over bytes: a line that is not a JSON object (or longer than
    ``MAX_LINE_BYTES``) is counted, never raised. Only the first header counts as one.
    """
    header: dict[str, Any] | None = None
    events: list[dict[str, Any]] = []
    bad = 0
    for raw in data.split(b"\n"):
        raw = raw.strip()
        if not raw:
            continue
        if len(raw) > MAX_LINE_BYTES:
            bad += 1
            continue
        try:
            record = json.loads(raw.decode("utf-8", "replace"))
        except (ValueError, RecursionError):
            bad += 1
            continue
        if not isinstance(record, dict):
            bad += 1
        elif record.get("type") == HEADER_TYPE and header is None:
            header = record
        else:
            events.append(record)
    return header, events, bad


def read_breadcrumb(path: str, *, dir_fd: int | None = None,
                    max_bytes: int = MAX_READ_BYTES
                    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], int]:
    """Read a breadcrumb with a size bound; never follows a symlink, never opens a FIFO or a
    device (:class:`memspan.safe_files.UnsafePathError`). A file above ``max_bytes`` keeps its
    header line and its newest ``max_bytes`` (the cut line counts as corrupt)."""
    head = read_regular_file(path, min(max_bytes, MAX_LINE_BYTES), dir_fd=dir_fd)
    if not head.truncated:
        return parse_breadcrumb(head.data)
    tail = read_regular_file(path, max_bytes, dir_fd=dir_fd, tail=True)
    first_line = head.data.split(b"\n", 1)[0]
    header, _, _ = parse_breadcrumb(first_line)
    _, events, bad = parse_breadcrumb(tail.data)
    return header, events, bad
