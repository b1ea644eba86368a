"""What the observable instruments report: the latest value of every series, and the peak
of every ``*.window_peak`` series since the previous collection.

Invariants: callbacks only read this state (no I/O at collection time); a window peak is
the maximum of everything offered since the last collection of that metric, and after a
collection the window restarts empty (reporting the latest value until a new sample comes).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from memspan.sources.base import AttributeItems, Reading

SeriesKey = tuple[str, AttributeItems]


class SamplerState:
    """Latest values and window peaks, keyed by (metric, attributes).

    ``window_peaks`` names the metrics whose window peak is kept (the catalogue's
    window-peak rows).
    """

    def __init__(self, window_peaks: frozenset[str] = frozenset()) -> None:
        self._window_peaks = window_peaks
        self._lock = threading.Lock()
        self._latest: dict[SeriesKey, int | float] = {}
        self._window: dict[SeriesKey, int | float] = {}

    def update(self, readings: Iterable[Reading]) -> None:
        with self._lock:
            latest = self._latest
            window = self._window
            window_peaks = self._window_peaks
            for reading in readings:
                key = (reading.metric, reading.attributes)
                latest[key] = reading.value
                if reading.metric in window_peaks:
                    previous = window.get(key)
                    if previous is None or reading.value > previous:
                        window[key] = reading.value

    def latest(self, metric: str) -> list[tuple[int | float, AttributeItems]]:
        with self._lock:
            return [(v, attrs) for (m, attrs), v in self._latest.items() if m == metric]

    def take_window_peaks(self, metric: str) -> list[tuple[int | float, AttributeItems]]:
        """Report the window peak of each series of ``metric`` and start a new window."""
        with self._lock:
            out = []
            for key, value in self._latest.items():
                if key[0] != metric:
                    continue
                peak = self._window.pop(key, None)
                out.append((value if peak is None else peak, key[1]))
            return out

    def value(self, metric: str, attributes: AttributeItems = ()) -> int | float | None:
        with self._lock:
            return self._latest.get((metric, attributes))

    def items(self) -> list[tuple[str, AttributeItems, int | float]]:
        """Every series' latest value: (metric, attributes, value)."""
        with self._lock:
            return [(metric, attrs, value) for (metric, attrs), value in self._latest.items()]
