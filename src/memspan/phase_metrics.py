"""The two phase histograms, recorded off the hot path.

A phase exit appends one small tuple to a bounded buffer; the buffer is drained into
``memspan.phase.duration`` and ``memspan.phase.memory.peak`` by the sampler thread (every
tick), by metric collection (before the histograms are read), and at shutdown. Each record
passes the phase span's context, so exemplars still carry that span's trace and span ids;
only the exemplar's timestamp is the drain time (at most one sampler tick later).

Invariant: bounded without loss. When the buffer holds ``max_pending`` records, the phase
exit that finds it full drains it itself.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from opentelemetry.context import Context
from opentelemetry.metrics import Histogram

from memspan import names

Pending = tuple[float, int | None, str, str, Context | None]


class PhaseHistograms:
    def __init__(self, duration: Histogram, peak: Histogram, max_pending: int = 4096) -> None:
        self._duration = duration
        self._peak = peak
        self.max_pending = max_pending
        self._pending: deque[Pending] = deque()
        self._drain_lock = threading.Lock()
        self._attributes: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}

    def add(self, duration_s: float, peak: int | None, path: str, device: str,
            context: Context | None) -> None:
        self._pending.append((duration_s, peak, path, device, context))
        if len(self._pending) >= self.max_pending:
            self.drain()

    def drain(self) -> int:
        """Record everything pending; returns how many phases were recorded."""
        if not self._pending:
            return 0
        with self._drain_lock:
            count = 0
            pending = self._pending
            while pending:
                try:
                    duration_s, peak, path, device, context = pending.popleft()
                except IndexError:
                    break
                attributes = self._attributes.get((path, device))
                if attributes is None:
                    if len(self._attributes) > 10_000:
                        self._attributes.clear()
                    attributes = ({names.PHASE_PATH: path},
                                  {names.PHASE_PATH: path, names.MEMORY_DEVICE: device})
                    self._attributes[(path, device)] = attributes
                self._duration.record(duration_s, attributes[0], context=context)
                if peak is not None:
                    self._peak.record(peak, attributes[1], context=context)
                count += 1
            return count
