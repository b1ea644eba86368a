"""Streaming the child's stdout/stderr through ``memspan run`` while keeping a bounded tail.

Invariants: every byte the child (or a grandchild that inherited the pipe) writes is passed
on until the *writer* closes the pipe, as ``cmd | tee`` would: memspan never closes a pipe
early, so a background grandchild is not killed by SIGPIPE. If memspan's own stdout goes
away (``memspan run ... | head``), output is still drained (kept only in the tail), so the
child never blocks on a full pipe. The tail keeps the last ``limit`` bytes; the excerpt
exported is a further-bounded decoded suffix.
"""

from __future__ import annotations

import collections
import threading
from typing import IO


class Tail:
    """The last ``limit`` bytes written through one pipe."""

    def __init__(self, limit: int) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._limit = limit
        self._lock = threading.Lock()

    def add(self, chunk: bytes) -> None:
        with self._lock:
            self._chunks.append(chunk)
            self._size += len(chunk)
            while self._size - len(self._chunks[0]) >= self._limit:
                self._size -= len(self._chunks.popleft())

    def text(self, limit: int | None = None) -> str:
        """The tail decoded (invalid UTF-8 replaced), at most ``limit`` bytes of it."""
        with self._lock:
            data = b"".join(self._chunks)
        keep = self._limit if limit is None else min(limit, self._limit)
        return data[-keep:].decode("utf-8", "replace")


def pump(source: IO[bytes], sink: IO[bytes], tail: Tail) -> None:
    """Copy ``source`` to ``sink`` until end of file; never raises on a closed ``sink``."""
    sink_ok = True
    read = getattr(source, "read1", source.read)
    while True:
        try:
            chunk = read(65536)
        except (OSError, ValueError):
            break
        if not chunk:
            break
        tail.add(chunk)
        if sink_ok:
            try:
                sink.write(chunk)
                sink.flush()
            except (OSError, ValueError):
                sink_ok = False  # keep draining: the child must not block on a full pipe
    try:
        source.close()
    except OSError:
        pass


def start_pump(source: IO[bytes], sink: IO[bytes], tail: Tail) -> threading.Thread:
    thread = threading.Thread(target=pump, args=(source, sink, tail), daemon=True,
                              name="memspan-run-output")
    thread.start()
    return thread
