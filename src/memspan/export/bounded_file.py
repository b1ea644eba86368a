"""An append-only JSON-lines file that never grows past a size bound.

Invariants:

- Each ``write`` is one line (the OTLP JSON file exporters write one record per call) and
  reaches the file in one ``write(2)`` on an ``O_APPEND`` descriptor, so processes sharing the
  file (forked DataLoader workers, ranks on one node) never interleave inside a line.
- When a line would take the file past ``max_bytes`` the file is rotated to ``<path>.1``
  (replacing the previous ``.1``). On disk there are therefore at most ``2 * max_bytes``
  bytes per file. The records of a replaced ``.1`` are counted as dropped
  (``output_rotated``); a single line larger than ``max_bytes`` is dropped and counted
  (``output_oversized``). Nothing is dropped silently.
- If another process rotated the file, the next write notices (the inode changed) and
  reopens the path.
"""

from __future__ import annotations

import io
import os
import threading

from memspan.drops import OUTPUT_OVERSIZED, OUTPUT_ROTATED, DropLedger


class BoundedLineFile(io.TextIOBase):
    """A text stream for the OTLP JSON file exporters, bounded by rotation."""

    def __init__(self, path: str, max_bytes: int, ledger: DropLedger) -> None:
        super().__init__()
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.path = path
        self.max_bytes = max_bytes
        self._ledger = ledger
        self._lock = threading.Lock()
        self._records = 0
        self._rotated_records = 0
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        data = text.encode("utf-8")
        if len(data) > self.max_bytes:
            self._ledger.add(
                OUTPUT_OVERSIZED,
                warning=f"a {len(data)}-byte record exceeds the {self.max_bytes}-byte bound "
                f"of {self.path}; it was dropped",
            )
            return len(text)
        with self._lock:
            if self.closed:
                raise ValueError(f"write to closed {self.path}")
            size = self._current_size()
            if size + len(data) > self.max_bytes:
                self._rotate()
            os.write(self._fd, data)
            self._records += text.count("\n") or 1
        return len(text)

    def _current_size(self) -> int:
        try:
            on_path = os.stat(self.path)
        except FileNotFoundError:
            on_path = None
        mine = os.fstat(self._fd)
        if on_path is None or on_path.st_ino != mine.st_ino:
            os.close(self._fd)
            self._fd = self._open()
            self._records = 0
            return os.fstat(self._fd).st_size
        return mine.st_size

    def _rotate(self) -> None:
        rotated = self.path + ".1"
        if os.path.exists(rotated) and self._rotated_records:
            self._ledger.add(
                OUTPUT_ROTATED,
                self._rotated_records,
                warning=f"{self.path} reached its size bound; the oldest records were dropped",
            )
        os.replace(self.path, rotated)
        self._rotated_records = self._records
        os.close(self._fd)
        self._fd = self._open()
        self._records = 0

    def flush(self) -> None:
        """Every write already reached the kernel."""

    def close(self) -> None:
        with self._lock:
            if not self.closed:
                os.close(self._fd)
        super().close()
