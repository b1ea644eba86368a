"""The open-phase stack on disk, updated in place on the caller's thread at every phase edge.

A SIGKILL leaves no chance to write, and the ring's ``phase_end`` events reach the breadcrumb
file late (the export worker records them, the writer throttles them), so the breadcrumb
file alone cannot say which phases were open at the kill. This file can: a fixed-size file
``<dump_dir>/.breadcrumbs/r<rank>_p<pid>.stack`` mapped ``MAP_SHARED``, with one slot per
phase. Opening a phase writes its record (scope id, parent scope id, path, start, entry
figures, user attributes) into a free slot; closing it rewrites that slot as a closed record
(the ``phase_end`` event with its figures). A memory write, no system call: the page cache
keeps what the process wrote when the process dies, and the launcher reads it back.

Layout (little-endian): a 64-byte header (:data:`MAGIC`, version, slot count, slot size,
overflow count, start time), then ``slot_count`` slots of ``slot_size`` bytes, each a 12-byte
slot header (state, payload length, CRC-32 of the payload) and a JSON object.

Invariants:

- Bounded: ``slot_count * slot_size`` bytes plus the header, fixed at creation (default
  128 slots of 2 KiB). A record that does not fit its slot loses its attributes, then its
  path is cut (both counted in the record); a phase opened while every slot holds an open
  phase gets no slot and is counted in the header's ``overflow`` (its start is still in the
  ring).
- A slot is written state ``EMPTY`` first, then its payload, length and CRC, then its new
  state, so a record cut by the kill reads as empty or fails its CRC; never as another phase.
- Closed slots are reused least recently closed first, so the slots also hold the latest
  closed phases (their ends, which the ring may not have had yet).
- Written only by the process that created it: a forked child (a DataLoader worker) never
  writes into its parent's mapping.
- :func:`parse_open_stack` is a total function over bytes (untrusted input): a slot that is
  not a valid record is counted, never raised; sizes in the header are checked against
  bounds and against the data actually there.
"""

from __future__ import annotations

import collections
import json
import mmap
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from memspan.fork_safety import reset_in_forked_children
from memspan.names import EventType

if TYPE_CHECKING:
    from memspan.phases.record import PhaseSpan

MAGIC = b"MSPSTAK1"
VERSION = 1
SUFFIX = ".stack"
HEADER = struct.Struct("<8sHHIIId")  # magic, version, reserved, slots, slot size, overflow, started
HEADER_BYTES = 64
_OVERFLOW_OFFSET = 20
SLOT_HEADER = struct.Struct("<BxxxII")  # state, payload length, crc32
SLOT_HEADER_BYTES = SLOT_HEADER.size
EMPTY, OPEN, CLOSED = 0, 1, 2
DEFAULT_SLOTS = 128
DEFAULT_SLOT_BYTES = 2048
#: bounds a reader accepts in a header (a writer stays within them)
MAX_SLOTS = 4096
MIN_SLOT_BYTES = 128
MAX_SLOT_BYTES = 64 << 10
#: the most bytes a reader takes from one stack file
MAX_READ_BYTES = HEADER_BYTES + MAX_SLOTS * 4096

#: user attributes kept per phase, and how long a key or a text value may be
MAX_ATTRIBUTES = 16
MAX_KEY_CHARS = 64
MAX_VALUE_CHARS = 128
MAX_SEQUENCE_ITEMS = 8
_PATH_CUT = 512

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str)
_START = EventType.PHASE_START.value
_END = EventType.PHASE_END.value


def stack_name(breadcrumb_name: str) -> str:
    """``r0_p12.jsonl`` -> ``r0_p12.stack``: the stack file beside a breadcrumb file."""
    return breadcrumb_name.rsplit(".", 1)[0] + SUFFIX


def _bounded_value(value: Any) -> tuple[Any, bool]:
    """A JSON-able value within the bounds, and whether it had to be cut."""
    kind = type(value)
    if kind is bool or kind is int or kind is float or value is None:
        return value, False
    if kind is str:
        return (value, False) if len(value) <= MAX_VALUE_CHARS else (value[:MAX_VALUE_CHARS], True)
    if isinstance(value, (list, tuple)):
        items = list(value[:MAX_SEQUENCE_ITEMS])
        cut = len(value) > MAX_SEQUENCE_ITEMS
        out = []
        for item in items:
            bounded, item_cut = _bounded_value(item if not isinstance(item, (list, tuple, dict))
                                               else str(item))
            out.append(bounded)
            cut = cut or item_cut
        return out, cut
    text = str(value)
    return (text, False) if len(text) <= MAX_VALUE_CHARS else (text[:MAX_VALUE_CHARS], True)


def bounded_attributes(attributes: Mapping[str, Any] | None) -> tuple[dict[str, Any], int]:
    """At most :data:`MAX_ATTRIBUTES` attributes, keys and texts cut to their bounds, and how
    many attributes were dropped or cut (0 when all are whole)."""
    if not attributes:
        return {}, 0
    out: dict[str, Any] = {}
    truncated = max(0, len(attributes) - MAX_ATTRIBUTES)
    for index, (key, value) in enumerate(attributes.items()):
        if index >= MAX_ATTRIBUTES:
            break
        name = str(key)
        bounded, cut = _bounded_value(value)
        if len(name) > MAX_KEY_CHARS:
            name, cut = name[:MAX_KEY_CHARS], True
        out[name] = bounded
        truncated += cut
    return out, truncated


class OpenStackWriter:
    """The writer of one stack file (see the module docstring). Not thread-bound: phases of
    any thread take slots; each slot is written by one phase at a time."""

    def __init__(self, buffer: mmap.mmap, slot_count: int, slot_bytes: int) -> None:
        self._map = buffer
        self.slot_count = slot_count
        self.slot_bytes = slot_bytes
        self._payload_bytes = slot_bytes - SLOT_HEADER_BYTES
        #: free slots, least recently closed first (deque ops are atomic: no lock, so a
        #: signal handler opening a phase in the middle of another cannot deadlock)
        self._free: collections.deque[int] = collections.deque(range(slot_count))
        #: scope id -> (slot, the bounded attributes' JSON) of each phase holding a slot
        self._held: dict[str, tuple[int, str]] = {}
        self._overflow_lock = threading.Lock()
        self.overflow = 0
        self.cut_records = 0
        self._live = True
        reset_in_forked_children(self)

    @classmethod
    def create(cls, dir_fd: int, name: str, *, slot_count: int = DEFAULT_SLOTS,
               slot_bytes: int = DEFAULT_SLOT_BYTES) -> OpenStackWriter:
        """Make ``name`` (relative to ``dir_fd``) a fresh stack file and map it: an exclusive
        ``0600`` temporary (``O_EXCL|O_NOFOLLOW``) renamed into place, so a planted symlink is
        replaced, never followed. Raises ``OSError``."""
        if not (1 <= slot_count <= MAX_SLOTS and MIN_SLOT_BYTES <= slot_bytes <= MAX_SLOT_BYTES):
            raise ValueError(f"stack file bounds out of range: {slot_count} x {slot_bytes}")
        size = HEADER_BYTES + slot_count * slot_bytes
        temporary = f".{name}.{secrets.token_hex(6)}.tmp"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temporary, flags, 0o600, dir_fd=dir_fd)
        try:
            os.ftruncate(fd, size)
            os.pwrite(fd, HEADER.pack(MAGIC, VERSION, 0, slot_count, slot_bytes, 0, time.time()), 0)
            buffer = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            os.rename(temporary, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=dir_fd)
            except OSError:
                pass
            raise
        finally:
            os.close(fd)
        return cls(buffer, slot_count, slot_bytes)

    def _after_fork_in_child(self) -> None:
        self._live = False  # the mapping is shared with the parent: never write into it

    @property
    def live(self) -> bool:
        return self._live

    def move_to(self, dir_fd: int, name: str) -> None:
        """Recreate the file (deleted under us) with the current slots, and map the new one.
        Raises ``OSError``; the old mapping stays in use until the new one is ready."""
        fresh = OpenStackWriter.create(dir_fd, name, slot_count=self.slot_count,
                                       slot_bytes=self.slot_bytes)
        fresh._map[:] = self._map[:]
        old, self._map = self._map, fresh._map
        fresh._live = False
        try:
            old.close()
        except (BufferError, ValueError):
            pass

    def opened(self, phase: PhaseSpan) -> None:
        """``phase`` opened (caller's thread): its record into a free slot."""
        if not self._live:
            return
        try:
            slot = self._free.popleft()
        except IndexError:
            with self._overflow_lock:
                self.overflow += 1
                struct.pack_into("<I", self._map, _OVERFLOW_OFFSET, self.overflow)
            return
        attributes, truncated = bounded_attributes(phase.attributes)
        attributes_json = _ENCODER.encode(attributes)
        parent = phase.parent
        record: dict[str, Any] = {
            "type": _START, "scope_id": phase.scope_id,
            "parent_scope_id": parent.scope_id if parent is not None else None,
            "path": phase.path_text, "name": phase.name, "depth": phase.depth,
            "thread_id": phase.thread_id, "thread_name": phase.thread.name,
            "start": phase.start_ns / 1e9,
        }
        if truncated:
            record["attributes_truncated"] = truncated
        entry = phase.entry
        if entry is not None:
            if entry.rss is not None:
                record["rss"] = entry.rss
            allocator = entry.allocator
            if allocator is not None:
                record["device"] = allocator.device
                record["allocated"] = allocator.allocated
        self._held[phase.scope_id] = (slot, attributes_json)
        self._write(slot, OPEN, record, attributes_json)

    def closed(self, phase: PhaseSpan) -> None:
        """``phase`` closed (caller's thread): its slot becomes its ``phase_end`` record."""
        held = self._held.pop(phase.scope_id, None)
        if held is None or not self._live:
            return
        slot, attributes_json = held
        parent = phase.parent
        record: dict[str, Any] = {
            "type": _END, "scope_id": phase.scope_id,
            "parent_scope_id": parent.scope_id if parent is not None else None,
            "path": phase.path_text, "start": phase.start_ns / 1e9, "end": phase.end_ns / 1e9,
            "duration_s": (phase.end_ns - phase.start_ns) / 1e9,
        }
        entry = phase.entry
        if entry is not None:
            if entry.rss is not None:
                record["rss_start"] = entry.rss
            allocator = entry.allocator
            if allocator is not None:
                record["device"] = allocator.device
                record["allocated_start"] = allocator.allocated
                record["reserved_start"] = allocator.reserved
        figures = phase.exit
        if figures is not None:
            for key, value in (("rss", figures.rss_end), ("rss_peak", figures.rss_peak),
                               ("allocated", figures.allocated_end),
                               ("allocated_peak", figures.allocated_peak),
                               ("retained", figures.retained)):
                if value is not None:
                    record[key] = value
        if phase.error is not None:
            record["error"] = phase.error
        self._write(slot, CLOSED, record, attributes_json)
        self._free.append(slot)

    def _write(self, slot: int, state: int, record: dict[str, Any], attributes_json: str) -> None:
        payload = (_ENCODER.encode(record)[:-1] + ',"attributes":' + attributes_json
                   + "}").encode("utf-8", "replace")
        if len(payload) > self._payload_bytes:
            payload = self._fit(record)
        offset = HEADER_BYTES + slot * self.slot_bytes
        buffer = self._map
        buffer[offset] = EMPTY
        start = offset + SLOT_HEADER_BYTES
        buffer[start:start + len(payload)] = payload
        SLOT_HEADER.pack_into(buffer, offset, EMPTY, len(payload), zlib.crc32(payload))
        buffer[offset] = state

    def _fit(self, record: dict[str, Any]) -> bytes:
        """A record too large for its slot: without attributes, then with its path cut."""
        self.cut_records += 1
        record["attributes_truncated"] = MAX_ATTRIBUTES
        record["attributes"] = {}
        payload = _ENCODER.encode(record).encode("utf-8", "replace")
        if len(payload) > self._payload_bytes:
            record["path"] = str(record.get("path", ""))[-_PATH_CUT:]
            record["name"] = str(record.get("name", ""))[:MAX_VALUE_CHARS]
            record["thread_name"] = str(record.get("thread_name", ""))[:MAX_VALUE_CHARS]
            record["error"] = str(record.get("error", ""))[:MAX_VALUE_CHARS]
            record["path_truncated"] = True
            payload = _ENCODER.encode(record).encode("utf-8", "replace")[:self._payload_bytes]
        return payload

    def close(self) -> None:
        """Unmap (the file itself is removed by its breadcrumb writer)."""
        self._live = False
        try:
            self._map.close()
        except (BufferError, ValueError):
            pass


@dataclass
class OpenStack:
    """What a stack file says: open phase records and closed ones (``phase_end`` events)."""

    open: list[dict[str, Any]] = field(default_factory=list)
    closed: list[dict[str, Any]] = field(default_factory=list)
    bad_slots: int = 0
    overflow: int = 0
    started_at: float | None = None
    valid: bool = False


def _record(payload: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(payload.decode("utf-8", "replace"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("scope_id"), str):
        return None
    attributes = record.get("attributes")
    if attributes is not None and not isinstance(attributes, dict):
        record["attributes"] = {}
    return record


def parse_open_stack(data: bytes) -> OpenStack:
    """Read a stack file's bytes (total: see the module docstring). ``valid`` is false when
    the header is not a stack file's; then nothing else is read."""
    out = OpenStack()
    if len(data) < HEADER_BYTES:
        return out
    magic, version, _, slots, slot_bytes, overflow, started = HEADER.unpack_from(data, 0)
    if magic != MAGIC or version != VERSION or not 1 <= slots <= MAX_SLOTS \
            or not MIN_SLOT_BYTES <= slot_bytes <= MAX_SLOT_BYTES:
        return out
    out.valid = True
    out.overflow = overflow
    out.started_at = started if started == started and 0 < started < 1e11 else None
    for slot in range(slots):
        offset = HEADER_BYTES + slot * slot_bytes
        if offset + slot_bytes > len(data):
            out.bad_slots += slots - slot  # the file is shorter than its header says
            break
        state, length, crc = SLOT_HEADER.unpack_from(data, offset)
        if state == EMPTY:
            continue
        start = offset + SLOT_HEADER_BYTES
        payload = data[start:start + length]
        record = None
        if state in (OPEN, CLOSED) and length <= slot_bytes - SLOT_HEADER_BYTES \
                and zlib.crc32(payload) == crc:
            record = _record(payload)
        if record is None:
            out.bad_slots += 1
        elif state == OPEN:
            out.open.append(record)
        else:
            out.closed.append(record)
    return out
