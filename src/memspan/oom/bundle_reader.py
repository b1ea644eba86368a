"""Reading an OOM bundle that may come from anyone: bounded, never following links, never hanging.

A bundle directory can be copied from another machine, planted in a shared dump directory
or damaged by a full disk, so every byte of it is untrusted input. Invariants:

- Only regular files are read: each file is opened relative to the bundle directory with
  ``O_NOFOLLOW | O_NONBLOCK`` (a symlink is refused, a FIFO never blocks the open) and
  checked with ``fstat`` (``S_ISREG``); a device, FIFO, socket or directory is reported,
  not read.
- Every read is bounded: JSON files by :data:`MAX_JSON_BYTES` (the manifest by
  :data:`MAX_MANIFEST_BYTES`), ``events.jsonl`` only from its last
  :data:`MAX_EVENTS_TAIL_BYTES` with lines of at most :data:`MAX_EVENT_LINE_BYTES`. A file
  over its bound is reported, never read whole.
- Nothing is written anywhere.
- Problems with a whole file (missing, a symlink, not a regular file, too large, not JSON,
  not the expected JSON type) are recorded per file in :attr:`Bundle.problems`; a value that
  does not fit the schema (a number where a name belongs, ``"1e999"`` as a size, a list
  of numbers as ``files``) is skipped and counted in :attr:`Schema.skipped`. The only
  exception that leaves this module is :class:`BundleError`, for a path that is not a
  bundle at all.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from memspan.oom.bundle import BUNDLE_FILES, BUNDLE_NAME, CUDA_SNAPSHOT_FILE

MAX_MANIFEST_BYTES = 256 << 10
MAX_JSON_BYTES = 2 << 20
MAX_EVENTS_TAIL_BYTES = 4 << 20
MAX_EVENT_LINE_BYTES = 256 << 10
#: the most events one read returns
MAX_EVENTS_SHOWN = 10_000
#: the longest string kept from any field (longer ones are cut)
MAX_TEXT_CHARS = 4096
MISSING = "missing"
_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class BundleError(Exception):
    """The path cannot be read as a bundle at all; the message is one line for the user."""


class UnreadableFile(Exception):
    """One file of a bundle could not be read; the message says why in a few words."""


@dataclass
class Schema:
    """Typed access to untrusted JSON: what does not fit is skipped and counted, never raised."""

    skipped: int = 0

    def skip(self) -> None:
        self.skipped += 1

    def text(self, obj: Mapping[str, Any], key: str) -> str | None:
        """A string field (cut to :data:`MAX_TEXT_CHARS`); anything else but null is skipped."""
        value = obj.get(key)
        if value is None:
            return None
        if isinstance(value, str):
            return value[:MAX_TEXT_CHARS]
        self.skip()
        return None

    def count(self, obj: Mapping[str, Any], key: str) -> int | None:
        """A non-negative whole number (bytes, ranks, pids); strings, bools, inf, NaN skipped."""
        value = obj.get(key)
        if value is None:
            return None
        number = as_count(value)
        if number is None:
            self.skip()
        return number

    def signed(self, obj: Mapping[str, Any], key: str) -> int | None:
        """A whole number that may be negative (retained bytes)."""
        value = obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.skip()
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.skip()
            return None
        if abs(value) > 1 << 64:
            self.skip()
            return None
        return int(value)

    def number(self, obj: Mapping[str, Any], key: str) -> float | None:
        """A finite number (seconds, timestamps)."""
        value = obj.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.skip()
            return None
        try:
            result = float(value)
        except OverflowError:  # an integer too large for a float
            self.skip()
            return None
        if not math.isfinite(result):
            self.skip()
            return None
        return result

    def mapping(self, obj: Mapping[str, Any], key: str) -> dict[str, Any]:
        """An object field; null or absent gives ``{}``, any other type is skipped."""
        value = obj.get(key)
        if value is None:
            return {}
        if isinstance(value, dict):
            return value
        self.skip()
        return {}

    def names(self, obj: Mapping[str, Any], key: str) -> list[str]:
        """A list of plain file names; entries that are not (paths, numbers) are skipped."""
        value = obj.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.skip()
            return []
        out = []
        for item in value[:64]:
            if isinstance(item, str) and _FILE_NAME.match(item):
                out.append(item)
            else:
                self.skip()
        return out


def as_count(value: Any) -> int | None:
    """``value`` as a non-negative integer below 2**64, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value < 0 or value > 1 << 64:
        return None
    return int(value)


@dataclass
class Bundle:
    """What could be read of one bundle; ``problems`` maps a file name to why it could not."""

    path: str
    manifest: dict[str, Any] | None
    schema: Schema = field(default_factory=Schema)
    problems: dict[str, str] = field(default_factory=dict)
    #: the files the manifest lists (None without a readable manifest)
    listed: list[str] | None = None

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def _open_regular(directory: str, name: str) -> tuple[int, os.stat_result]:
    """An fd on ``directory/name`` if it is a regular file (no symlink, never blocks)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(os.path.join(directory, name), flags)
    except FileNotFoundError:
        raise UnreadableFile(MISSING) from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnreadableFile("a symbolic link (not followed)") from None
        raise UnreadableFile(f"unreadable ({error.strerror or type(error).__name__})") from None
    try:
        info = os.fstat(fd)
    except OSError as error:
        os.close(fd)
        raise UnreadableFile(f"unreadable ({error.strerror})") from None
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnreadableFile("not a regular file")
    return fd, info


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(1 << 20, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_regular_file(directory: str, name: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``; raises :class:`UnreadableFile`."""
    fd, info = _open_regular(directory, name)
    try:
        if info.st_size > max_bytes:
            raise UnreadableFile(f"larger than {max_bytes} bytes ({info.st_size}), not read")
        data = _read_at_most(fd, max_bytes + 1)
    except OSError as error:
        raise UnreadableFile(f"unreadable ({error.strerror})") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:  # it grew after fstat
        raise UnreadableFile(f"larger than {max_bytes} bytes, not read")
    return data


def parse_json(data: bytes) -> Any:
    """Parse untrusted JSON; raises :class:`UnreadableFile` for anything that is not JSON."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise UnreadableFile("not UTF-8 text") from None
    except RecursionError:
        raise UnreadableFile("nested too deeply") from None
    except ValueError:  # JSONDecodeError, and integers longer than Python converts
        raise UnreadableFile("not valid JSON") from None


def read_json(bundle: Bundle, name: str, expected: type, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """The JSON value of ``name`` if it has the ``expected`` type, else None (problem noted)."""
    try:
        value = parse_json(read_regular_file(bundle.path, name, max_bytes))
    except UnreadableFile as problem:
        if str(problem) != MISSING or bundle.listed is None or name in bundle.listed:
            bundle.problems[name] = str(problem)  # absent and not listed is no damage
        return None
    if not isinstance(value, expected):
        bundle.problems[name] = f"not a JSON {'object' if expected is dict else 'array'}"
        return None
    return value


def open_bundle(path: str) -> Bundle:
    """Read the manifest of the bundle at ``path``.

    Raises :class:`BundleError` when ``path`` is not a directory, or is a directory whose
    name is not a bundle name and that holds no readable manifest (not a bundle at all).
    """
    try:
        info = os.stat(path)
    except OSError as error:
        raise BundleError(f"{path} is not a bundle directory ({error.strerror})") from None
    if not stat.S_ISDIR(info.st_mode):
        raise BundleError(f"{path} is not a bundle directory")
    bundle = Bundle(path=path, manifest=None)
    manifest = read_json(bundle, "manifest.json", dict, MAX_MANIFEST_BYTES)
    if manifest is not None and "schema_version" not in manifest:
        bundle.problems["manifest.json"] = "not a bundle manifest (no schema_version)"
        manifest = None
    bundle.manifest = manifest
    if manifest is not None:
        bundle.listed = bundle.schema.names(manifest, "files")
    if manifest is None and BUNDLE_NAME.match(bundle.name) is None:
        raise BundleError(f"{path} is not an OOM bundle (manifest.json is "
                          f"{bundle.problems.get('manifest.json', 'missing')})")
    return bundle


def missing_files(bundle: Bundle) -> list[str]:
    """Files the manifest lists that are not in the bundle (links not followed)."""
    return [name for name in bundle.listed or () if not _lexists(os.path.join(bundle.path, name))]


def _lexists(path: str) -> bool:
    try:
        os.lstat(path)
    except OSError:
        return False
    return True


def has_cuda_snapshot(bundle: Bundle) -> bool:
    """True when the bundle holds a regular-file snapshot (a link to one does not count)."""
    try:
        info = os.lstat(os.path.join(bundle.path, CUDA_SNAPSHOT_FILE))
    except OSError:
        return False
    return stat.S_ISREG(info.st_mode)


def _last_lines(data: bytes, count: int, *, partial_first: bool) -> list[bytes]:
    """The last ``count`` lines of ``data``, oldest first (scanned from the end: no split)."""
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    taken: list[bytes] = []
    while end > 0 and len(taken) < count:
        newline = data.rfind(b"\n", 0, end)
        if newline < 0 and partial_first:
            break  # the read began in the middle of this line
        taken.append(data[newline + 1:end])
        end = newline
    taken.reverse()
    return taken


def tail_events(bundle: Bundle, count: int) -> Iterator[dict[str, Any]]:
    """The last ``count`` events of ``events.jsonl``, oldest first, one dict at a time.

    Reads at most :data:`MAX_EVENTS_TAIL_BYTES` from the end of the file and returns at most
    :data:`MAX_EVENTS_SHOWN` events. Lines that are empty, longer than
    :data:`MAX_EVENT_LINE_BYTES`, not JSON or not objects are skipped and counted; a
    problem with the file itself is recorded in ``bundle.problems``.
    """
    if count <= 0:
        return
    name = BUNDLE_FILES[1]
    try:
        fd, info = _open_regular(bundle.path, name)
    except UnreadableFile as problem:
        if str(problem) != MISSING or bundle.listed is None or name in bundle.listed:
            bundle.problems[name] = str(problem)
        return
    try:
        start = max(0, info.st_size - MAX_EVENTS_TAIL_BYTES)
        os.lseek(fd, start, os.SEEK_SET)
        data = _read_at_most(fd, MAX_EVENTS_TAIL_BYTES)
    except OSError as error:
        bundle.problems[name] = f"unreadable ({error.strerror})"
        return
    finally:
        os.close(fd)
    for line in _last_lines(data, min(count, MAX_EVENTS_SHOWN), partial_first=start > 0):
        if not line or len(line) > MAX_EVENT_LINE_BYTES:
            bundle.schema.skip()
            continue
        try:
            event = parse_json(line)
        except UnreadableFile:
            bundle.schema.skip()
            continue
        if not isinstance(event, dict):
            bundle.schema.skip()
            continue
        yield event
