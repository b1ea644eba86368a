"""The flight recorder's ring buffer: the last events before an OOM, bounded twice.

Invariants:

- Bounded by count and by (estimated) bytes. Samples and rare events (phase boundaries,
  allocator retries/OOMs, cgroup OOM kills) have separate budgets, so a flood of samples
  never evicts the phase boundaries that explain an OOM: samples get a quarter of each budget.
- Recording never blocks on I/O and never raises on odd payloads: an event above
  ``max_event_bytes`` is truncated (its long strings cut, ``_truncated`` set) and counted;
  every eviction is counted as ``ring_overflow``.
- Events come back in recording order (a global sequence number orders both budgets).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from memspan.drops import EVENT_TRUNCATED, RING_OVERFLOW, DropLedger
from memspan.oom.events import EventType

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


class _Budget:
    __slots__ = ("bytes", "events", "max_bytes", "max_events")

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.events: deque[tuple[int, float, dict[str, Any], int]] = deque()
        self.bytes = 0
        self.max_events = max_events
        self.max_bytes = max_bytes


class EventRing:
    """Two bounded deques (samples, rare events) behind one lock."""

    def __init__(self, capacity: int, *, max_bytes: int = 32 << 20,
                 max_event_bytes: int = 64 << 10, ledger: DropLedger | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"ring capacity must be >= 1, got {capacity}")
        sample_events = max(1, capacity // 4)
        self._samples = _Budget(sample_events, max(1, max_bytes // 4))
        self._rare = _Budget(max(1, capacity - sample_events), max(1, max_bytes - max_bytes // 4))
        self.max_event_bytes = max_event_bytes
        self.ledger = ledger if ledger is not None else DropLedger()
        self._lock = threading.Lock()
        self._sequence = 0

    def record(self, event: Mapping[str, Any]) -> None:
        """Record a copy of ``event`` (the caller may reuse its dict)."""
        self.record_owned(dict(event))

    def record_owned(self, payload: dict[str, Any]) -> None:
        """Record ``payload`` itself: the caller hands it over and never touches it again."""
        event: Mapping[str, Any] = payload
        size = estimate_size(payload)
        if size > self.max_event_bytes:
            payload, size = self._shrink(event)
        budget = self._samples if payload.get("type") == _SAMPLE else self._rare
        entry_time = time.time()
        with self._lock:
            self._sequence += 1
            events = budget.events
            events.append((self._sequence, entry_time, payload, size))
            budget.bytes += size
            if len(events) <= budget.max_events and budget.bytes <= budget.max_bytes:
                return
            evicted = 0
            while len(events) > budget.max_events or (
                budget.bytes > budget.max_bytes and len(events) > 1
            ):
                budget.bytes -= events.popleft()[3]
                evicted += 1
        self.ledger.add(RING_OVERFLOW, evicted)

    def _shrink(self, event: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        payload = _truncate(event)
        payload["_truncated"] = True
        size = estimate_size(payload)
        self.ledger.add(EVENT_TRUNCATED)
        if size > self.max_event_bytes:
            payload = {"type": str(event.get("type", "user")), "_truncated": True}
            size = estimate_size(payload)
        return payload, size

    def snapshot(self) -> list[dict[str, Any]]:
        """Every buffered event, oldest first, with ``seq`` and ``ts`` (epoch seconds)."""
        with self._lock:
            merged = sorted([*self._samples.events, *self._rare.events], key=lambda e: e[0])
        return [{"seq": seq, "ts": ts, **payload} for seq, ts, payload, _ in merged]

    def since(self, sequence: int) -> list[dict[str, Any]]:
        """Events recorded after ``sequence``, oldest first (incremental breadcrumb flushes).

        Walks each budget from its newest end, so the cost is proportional to what is new.
        """
        newer: list[tuple[int, float, dict[str, Any], int]] = []
        with self._lock:
            for budget in (self._samples, self._rare):
                for entry in reversed(budget.events):
                    if entry[0] <= sequence:
                        break
                    newer.append(entry)
        newer.sort(key=lambda e: e[0])
        return [{"seq": seq, "ts": ts, **payload} for seq, ts, payload, _ in newer]

    @property
    def last_sequence(self) -> int:
        return self._sequence

    def clear(self) -> None:
        with self._lock:
            for budget in (self._samples, self._rare):
                budget.events.clear()
                budget.bytes = 0

    def __len__(self) -> int:
        return len(self._samples.events) + len(self._rare.events)
