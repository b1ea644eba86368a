"""Bounded reading of untrusted JSON-lines files: regular files only, lines of bounded length.

Invariants: a file that is not a regular file (a FIFO, ``/dev/zero``, a directory) is refused
with :class:`InputError` before anything is read, and opening never blocks (``O_NONBLOCK``);
a line longer than ``max_line_bytes`` is skipped in chunks, never held whole, and counted;
a line that is not JSON (or nests too deep) is counted, never raised. Memory is bounded by
``max_line_bytes`` times a small factor, whatever the file.
"""

from __future__ import annotations

import json
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

MAX_LINE_BYTES = 16 << 20
_CHUNK = 1 << 20

UNPARSABLE = "not JSON"
TOO_LONG = "line too long"
NOT_OBJECT = "not a JSON object"
WRONG_SHAPE = "wrong shape"


class InputError(Exception):
    """Input that cannot be used at all (named in the message). The one error readers raise."""


def open_regular(path: str, max_bytes: int | None = None) -> int:
    """An fd on ``path`` if it is a regular file (at most ``max_bytes``), else InputError."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise InputError(f"cannot open {path!r}: {error.strerror or error}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{path!r} is not a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise InputError(f"{path!r} is {info.st_size} bytes, over the {max_bytes} byte bound")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_small_json(path: str, max_bytes: int = 1 << 20) -> Any:
    """A small JSON document from a regular file; InputError on anything else."""
    fd = open_regular(path, max_bytes)
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(f"{path!r} grew over the {max_bytes} byte bound")
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise InputError(f"{path!r} is not valid JSON") from None


class LineReader:
    """Yields the JSON objects of JSON-lines files; counts what it skips in ``skipped``."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self.skipped: Counter[str] = Counter()
        self.lines = 0

    def records(self, paths: list[str], progress: Callable[[int], None]) -> Iterator[dict[str, Any]]:
        done = 0
        for path in paths:
            fd = open_regular(path)
            with os.fdopen(fd, "rb") as handle:
                for raw, size in self._raw_lines(handle):
                    done += size
                    progress(done)
                    if raw is None:
                        continue
                    self.lines += 1
                    try:
                        record = json.loads(raw)
                    except (ValueError, RecursionError):
                        self.skipped[UNPARSABLE] += 1
                        continue
                    if not isinstance(record, dict):
                        self.skipped[NOT_OBJECT] += 1
                        continue
                    yield record

    def _raw_lines(self, handle: Any) -> Iterator[tuple[bytes | None, int]]:
        """(line, bytes consumed); ``None`` for a skipped overlong line (already counted)."""
        limit = self.max_line_bytes
        while True:
            line = handle.readline(limit + 1)
            if not line:
                return
            if len(line) <= limit or line.endswith(b"\n"):
                if line.strip():
                    yield line, len(line)
                continue
            consumed = len(line)
            while not line.endswith(b"\n"):  # drop the rest of the overlong line
                line = handle.readline(_CHUNK)
                if not line:
                    break
                consumed += len(line)
            self.lines += 1
            self.skipped[TOO_LONG] += 1
            yield None, consumed


def describe_skips(skipped: Counter[str]) -> str:
    """``3 lines skipped (2 not JSON, 1 line too long)``, or the empty string."""
    total = sum(skipped.values())
    if not total:
        return ""
    parts = ", ".join(f"{count} {reason}" for reason, count in sorted(skipped.items()))
    return f"{total} record{'s' if total != 1 else ''} skipped ({parts})"
