"""An append-only JSON-lines file that never grows past a size bound and never holds half a line.

Invariants:

- Each ``write`` is one line (the OTLP JSON file exporters write one record per call) and
  normally reaches the file in one ``write(2)`` on an ``O_APPEND`` descriptor, so processes
  sharing the file (forked DataLoader workers, ranks on one node) never interleave inside a
  line. A short write is continued until the whole line is there.
- A line that cannot be written whole (disk full, file size limit, I/O error) is dropped
  whole and counted (``output_write_failed``): what was already written of it is cut off
  again, so the file never holds a partial line that would glue itself to the next record.
  (If another process appended meanwhile, the partial line is ended with a newline instead,
  which a reader skips as one unparseable line.)
- When a line would take the file past ``max_bytes`` the file is rotated to ``<path>.1``
  (replacing the previous ``.1``). On disk there are therefore at most ``2 * max_bytes``
  bytes per file. The records of a replaced ``.1`` are counted as dropped
  (``output_rotated``: spans for the span file, whatever the batch a line holds, lines
  otherwise); a single line larger than ``max_bytes`` is dropped and counted
  (``output_oversized``). Nothing is dropped silently.
- The directory is created 0700 when memspan creates it and the files are 0600: telemetry
  holds paths, attribute values and host names that are nobody else's business. Files are
  opened with ``O_NOFOLLOW``: a symlink planted at the path is refused, not followed.
- If another process rotated the file, the next write notices (the inode changed) and
  reopens the path. Two processes rotating at once: the loser's ``os.replace`` finds no file
  (ENOENT) and its line goes into the new file the winner left, never dropped for that.
  With several writers the bound is per file set: at most ``2 * max_bytes`` on disk, and
  what a rotation replaces is counted by the writer that replaced it.
"""

from __future__ import annotations

import io
import os
import threading

from memspan.drops import OUTPUT_OVERSIZED, OUTPUT_ROTATED, OUTPUT_WRITE_FAILED, DropLedger

DIRECTORY_MODE = 0o700
FILE_MODE = 0o600


class BoundedLineFile(io.TextIOBase):
    """A text stream for the OTLP JSON file exporters, bounded by rotation."""

    def __init__(self, path: str, max_bytes: int, ledger: DropLedger) -> None:
        super().__init__()
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.path = os.path.abspath(path)
        self.max_bytes = max_bytes
        self._ledger = ledger
        self._lock = threading.Lock()
        self._records = 0
        self._rotated_records = 0
        make_private_directory(os.path.dirname(self.path))
        self._fd = self._open()

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        fd = os.open(self.path, flags, FILE_MODE)
        try:
            if os.fstat(fd).st_uid == os.geteuid():
                os.fchmod(fd, FILE_MODE)  # a file left by an older version may be 0644
        except OSError:
            pass
        return fd

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.write_line(text.encode("utf-8"))
        return len(text)

    def write_line(self, data: bytes, *, records: int | None = None) -> bool:
        """Append ``data`` (one or more whole lines) or drop it whole; True when written.

        ``records``: how many telemetry records (spans) the data holds, which a rotation that
        drops it counts; by default its lines."""
        if len(data) > self.max_bytes:
            self._ledger.add(
                OUTPUT_OVERSIZED,
                warning=f"a {len(data)}-byte record exceeds the {self.max_bytes}-byte bound "
                f"of {self.path}; it was dropped",
            )
            return False
        with self._lock:
            if self.closed:
                raise ValueError(f"write to closed {self.path}")
            try:
                size = self._current_size()
                if size + len(data) > self.max_bytes:
                    self._rotate()
                    size = 0
                self._write_whole(data, size)
            except OSError as error:
                self._ledger.add(
                    OUTPUT_WRITE_FAILED,
                    warning=f"writing {self.path} failed ({error.strerror or error}); "
                    "the record was dropped whole",
                )
                return False
            self._records += records if records is not None else (data.count(b"\n") or 1)
        return True

    def _write_whole(self, data: bytes, size_before: int) -> None:
        view = memoryview(data)
        written = 0
        try:
            while written < len(data):
                count = os.write(self._fd, view[written:])
                if count <= 0:
                    raise OSError(f"write returned {count}")
                written += count
        except OSError:
            if written:
                self._undo_partial(size_before, written)
            raise

    def _undo_partial(self, size_before: int, written: int) -> None:
        """Cut the partial line off again (or end it, if someone appended after it)."""
        try:
            if os.fstat(self._fd).st_size == size_before + written:
                os.ftruncate(self._fd, size_before)
            else:
                os.write(self._fd, b"\n")
        except OSError:
            pass

    def _current_size(self) -> int:
        try:
            on_path = os.lstat(self.path)
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
        if os.path.lexists(rotated) and self._rotated_records:
            self._ledger.add(
                OUTPUT_ROTATED,
                self._rotated_records,
                warning=f"{self.path} reached its size bound; the oldest records were dropped",
            )
        try:
            os.replace(self.path, rotated)
        except FileNotFoundError:
            # another process rotated it first: the file on the path is new; write there
            os.close(self._fd)
            self._fd = self._open()
            self._records = 0
            return
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


def make_private_directory(directory: str) -> None:
    """Create ``directory`` (and missing parents); the leaf memspan creates is 0700.

    An existing directory is left as it is (it may be the user's working directory).
    """
    if os.path.isdir(directory):
        return
    os.makedirs(directory, mode=DIRECTORY_MODE, exist_ok=True)
    try:
        os.chmod(directory, DIRECTORY_MODE)  # makedirs' mode is filtered by the umask
    except OSError:
        pass
