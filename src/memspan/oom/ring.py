"""The flight recorder's ring buffer: the last events before an OOM, bounded twice.

Invariants:

- At most ``capacity`` events (Stormlog's ``buffer_size``) and ``max_bytes`` (estimated
  JSON bytes) are kept in total; a full ring drops its oldest event for each new one.
- Samples are capped at a quarter of both budgets (:data:`SAMPLE_SHARE`): a flood of
  samples evicts only older samples, so it never pushes out the phase boundaries, allocator
  retries/OOMs and cgroup OOM kills that explain an OOM. Rare events may use the whole ring;
  when no samples are recorded it holds ``capacity`` rare events.
- Recording never blocks on I/O and never raises on odd payloads: an event above
  ``max_bytes_per_event`` is truncated (its long strings cut, ``_truncated`` set) and
  counted; every eviction is counted as ``ring_overflow``.
- Events come back in recording order (a global sequence number orders both kinds).
- A fixed-shape event may be recorded as a compact tuple and a renderer
  (:meth:`EventRing.record_rendered`): the dict is built only when the ring is read (a dump,
  a breadcrumb flush), never for the events that are evicted unread. Its size bound is the
  caller's, so both bounds still hold.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from memspan.drops import EVENT_TRUNCATED, RING_OVERFLOW, SIGNAL_REENTRY, DropLedger
from memspan.names import EventType
from memspan.reentry import ReentryGuard

_STRING_CUT = 1024
_SAMPLE = EventType.SAMPLE.value


def estimate_size(value: Any, depth: int = 0) -> int:
    """A cheap estimate of the JSON size of ``value`` (no encoding).

    Flat dicts of scalars, the common event shape, take the fast path (exact type checks,
    no recursion); nested containers recurse up to a fixed depth.
    """
    kind = type(value)
    if kind is str:
        return len(value) + 2
    if kind is dict:
        if depth > 4:
            return 64
        size = 2
        for key, item in value.items():
            item_kind = type(item)
            if item_kind is str:
                size += len(key) + len(item) + 6
            elif item_kind is int or item_kind is float or item_kind is bool or item is None:
                size += len(key) + 24
            else:
                size += len(str(key)) + 4 + estimate_size(item, depth + 1)
        return size
    if isinstance(value, str):
        return len(value) + 2
    if isinstance(value, Mapping):
        return estimate_size(dict(value), depth)
    if isinstance(value, (list, tuple)):
        if depth > 4:
            return 64
        return 2 + sum(estimate_size(v, depth + 1) + 1 for v in value)
    return 24


def _truncate(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return value if len(value) <= _STRING_CUT else value[:_STRING_CUT] + "..."
    if isinstance(value, Mapping):
        if depth > 3:
            return "<truncated>"
        return {str(k): _truncate(v, depth + 1) for k, v in list(value.items())[:64]}
    if isinstance(value, (list, tuple)):
        if depth > 3:
            return "<truncated>"
        return [_truncate(v, depth + 1) for v in list(value)[:64]]
    return value


#: the largest fraction of the ring (events and bytes) that samples may occupy
SAMPLE_SHARE = 4
#: default bound on one event's estimated size; larger events are truncated
MAX_BYTES_PER_EVENT = 64 << 10
#: default bound on the whole ring's estimated size
MAX_RING_BYTES = 32 << 20

#: (sequence, epoch seconds, payload, estimated bytes, renderer or None)
_Entry = tuple[int, float, Any, int, "Callable[[Any], dict[str, Any]] | None"]


def _rendered(entry: _Entry) -> dict[str, Any]:
    sequence, ts, payload, _, render = entry
    if render is None:
        return {"seq": sequence, "ts": ts, **payload}
    return {"seq": sequence, "ts": ts, **render(payload)}


class EventRing:
    """Two deques (samples, rare events) behind one lock, bounded together."""

    def __init__(self, capacity: int, *, max_bytes: int = MAX_RING_BYTES,
                 max_bytes_per_event: int = MAX_BYTES_PER_EVENT,
                 ledger: DropLedger | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1, got {capacity}")
        if max_bytes < 1 or max_bytes_per_event < 1:
            raise ValueError("ring byte bounds must be >= 1, got "
                             f"max_bytes={max_bytes}, max_bytes_per_event={max_bytes_per_event}")
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.max_sample_events = max(1, capacity // SAMPLE_SHARE)
        self.max_sample_bytes = max(1, max_bytes // SAMPLE_SHARE)
        self.max_bytes_per_event = max_bytes_per_event
        self.ledger = ledger if ledger is not None else DropLedger()
        self._samples: deque[_Entry] = deque()
        self._rare: deque[_Entry] = deque()
        self._sample_bytes = 0
        self._rare_bytes = 0
        self._lock = ReentryGuard()
        self._sequence = 0

    def record(self, event: Mapping[str, Any]) -> None:
        """Record a copy of ``event`` (the caller may reuse its dict)."""
        self.record_owned(dict(event))

    def record_owned(self, payload: dict[str, Any], size: int | None = None) -> None:
        """Record ``payload`` itself: the caller hands it over and never touches it again.

        ``size``: the caller's bound on the payload's JSON size, for fixed-shape events
        (it saves the estimate); it must not be below the real size.
        """
        event: Mapping[str, Any] = payload
        if size is None:
            size = estimate_size(payload)
        if size > self.max_bytes_per_event:
            payload, size = self._shrink(event)
        is_sample = payload.get("type") == _SAMPLE
        entry_time = time.time()
        if not self._lock.enter():  # a signal handler interrupted this thread in the ring
            self.ledger.add(SIGNAL_REENTRY)
            return
        try:
            self._sequence += 1
            entry: _Entry = (self._sequence, entry_time, payload, size, None)
            if is_sample:
                self._samples.append(entry)
                self._sample_bytes += size
                over = (len(self._samples) > self.max_sample_events
                        or self._sample_bytes > self.max_sample_bytes)
            else:
                self._rare.append(entry)
                self._rare_bytes += size
                over = False
            if not over and (len(self._samples) + len(self._rare) <= self.capacity
                             and self._sample_bytes + self._rare_bytes <= self.max_bytes):
                return  # within every bound: the common case while the ring fills
            evicted = self._evict()
        finally:
            self._lock.exit()
        if evicted:
            self.ledger.add(RING_OVERFLOW, evicted)

    def record_rendered(self, compact: tuple[Any, ...],
                        render: Callable[[tuple[Any, ...]], dict[str, Any]],
                        size: int, timestamp: float) -> None:
        """Record a rare, fixed-shape event as ``compact``; ``render(compact)`` builds its
        dict when the ring is read. ``size`` must bound the rendered event's JSON size (and
        stay within ``max_bytes_per_event``); ``timestamp`` is when the event happened."""
        if not self._lock.enter():
            self.ledger.add(SIGNAL_REENTRY)
            return
        try:
            self._sequence += 1
            rare, samples = self._rare, self._samples
            rare.append((self._sequence, timestamp, compact, size, render))
            self._rare_bytes += size
            count = len(samples) + len(rare)
            within_bytes = self._sample_bytes + self._rare_bytes <= self.max_bytes
            if count <= self.capacity and within_bytes:
                return
            if count == self.capacity + 1 and within_bytes:
                # a full ring, the steady state: the oldest event of either kind goes (what
                # _evict does here, samples being within their share already)
                if samples and samples[0][0] < rare[0][0]:
                    self._sample_bytes -= samples.popleft()[3]
                else:
                    self._rare_bytes -= rare.popleft()[3]
                evicted = 1
            else:
                evicted = self._evict()
        finally:
            self._lock.exit()
        if evicted:
            self.ledger.add(RING_OVERFLOW, evicted)

    def _evict(self) -> int:
        """Restore the bounds (lock held); return how many events were dropped.

        Samples over their share go first (oldest sample); then, while the total is over,
        the oldest event of either kind. The newest event is never dropped for its bytes alone
        (one event within ``max_bytes_per_event`` always fits).
        """
        evicted = 0
        samples, rare = self._samples, self._rare
        sample_bytes, rare_bytes = self._sample_bytes, self._rare_bytes
        while len(samples) > 1 and (len(samples) > self.max_sample_events
                                    or sample_bytes > self.max_sample_bytes):
            sample_bytes -= samples.popleft()[3]
            evicted += 1
        count = len(samples) + len(rare)
        capacity, max_bytes = self.capacity, self.max_bytes
        while count > capacity or (sample_bytes + rare_bytes > max_bytes and count > 1):
            if samples and (not rare or samples[0][0] < rare[0][0]):
                sample_bytes -= samples.popleft()[3]
            else:
                rare_bytes -= rare.popleft()[3]
            count -= 1
            evicted += 1
        self._sample_bytes, self._rare_bytes = sample_bytes, rare_bytes
        return evicted

    def _shrink(self, event: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        payload = _truncate(event)
        payload["_truncated"] = True
        size = estimate_size(payload)
        self.ledger.add(EVENT_TRUNCATED)
        if size > self.max_bytes_per_event:
            payload = {"type": str(event.get("type", "user")), "_truncated": True}
            size = estimate_size(payload)
        return payload, size

    def snapshot(self) -> list[dict[str, Any]]:
        """Every buffered event, oldest first, with ``seq`` and ``ts`` (epoch seconds)."""
        entered = self._lock.enter()  # re-entered from a signal handler: a copy is atomic
        try:
            merged = sorted([*self._samples, *self._rare], key=lambda e: e[0])
        finally:
            if entered:
                self._lock.exit()
        return [_rendered(entry) for entry in merged]

    def iter_snapshot(self) -> Iterator[dict[str, Any]]:
        """:meth:`snapshot`, rendered one event at a time as it is consumed (a dump under
        memory pressure streams the events instead of holding them all at once)."""
        entered = self._lock.enter()
        try:
            merged = sorted([*self._samples, *self._rare], key=lambda e: e[0])
        finally:
            if entered:
                self._lock.exit()
        return (_rendered(entry) for entry in merged)

    def since(self, sequence: int) -> list[dict[str, Any]]:
        """Events recorded after ``sequence``, oldest first (incremental breadcrumb flushes).

        Walks each deque from its newest end, so the cost is proportional to what is new.
        """
        newer: list[_Entry] = []
        entered = self._lock.enter()
        try:
            for events in (self._samples, self._rare):
                for entry in reversed(list(events) if not entered else events):
                    if entry[0] <= sequence:
                        break
                    newer.append(entry)
        finally:
            if entered:
                self._lock.exit()
        newer.sort(key=lambda e: e[0])
        return [_rendered(entry) for entry in newer]

    @property
    def last_sequence(self) -> int:
        return self._sequence

    def clear(self) -> None:
        entered = self._lock.enter()
        try:
            self._samples.clear()
            self._rare.clear()
            self._sample_bytes = 0
            self._rare_bytes = 0
        finally:
            if entered:
                self._lock.exit()

    def __len__(self) -> int:
        return len(self._samples) + len(self._rare)
