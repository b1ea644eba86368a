"""Answer "what was the highest sample since tick T?" without keeping every sample.

A phase records the current tick when it opens; when it closes it asks for the maximum
since. The history is a stack of (tick, value) pairs whose values strictly decrease from
bottom to top, so the first pair with a tick after T holds the maximum of every sample after
T: one ``bisect`` per phase exit, amortised O(1) per sample.

Never waits for its own thread (:class:`~memspan.reentry.ReentryGuard`): a reading from a
signal handler that interrupted this thread inside the history is skipped (``max_since``
answers None: unknown, so the peak is reported as not exact).

Bounded: at most ``capacity`` pairs. When full the oldest pair is dropped, which can only
make a very old phase's answer lower than the truth (a lower bound, reported with
``peak_exact=false`` anyway).
"""

from __future__ import annotations

from bisect import bisect_right

from memspan.reentry import ReentryGuard


class MaxHistory:
    """Monotonic max-stack over one series of samples."""

    __slots__ = ("_capacity", "_lock", "_ticks", "_values", "tick")

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._lock = ReentryGuard()
        self._ticks: list[int] = []
        self._values: list[int] = []
        self.tick = 0

    def record(self, value: int) -> None:
        if not self._lock.enter():
            return  # a signal handler inside a record on this thread: this sample is skipped
        try:
            self.tick += 1
            values = self._values
            while values and values[-1] <= value:
                values.pop()
                self._ticks.pop()
            values.append(value)
            self._ticks.append(self.tick)
            if len(values) > self._capacity:
                del values[0]
                del self._ticks[0]
        finally:
            self._lock.exit()

    def max_since(self, tick: int) -> int | None:
        """Highest value recorded after ``tick``; None when nothing was recorded since."""
        if not self._lock.enter():
            return None  # interrupted inside the history by a signal handler: unknown
        try:
            index = bisect_right(self._ticks, tick)
            return self._values[index] if index < len(self._values) else None
        finally:
            self._lock.exit()
