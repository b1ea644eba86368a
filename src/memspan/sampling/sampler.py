"""One daemon thread per tracker that turns memory sources into metric state.

Invariants:

- Fixed-rate schedule: tick *k* is due at ``start + k * interval``; a late tick never shifts
  later ones (no drift), and ticks missed while the process was stalled are skipped, not
  replayed in a burst.
- A source whose class declares ``cadence = Cadence.SLOW`` (NVML) is sampled every
  ``slow_interval`` instead of every tick.
- Which readings are counters (their rises are reported to listeners) and which keep a
  window peak comes from the session's :class:`~memspan.metric_catalogue.MetricCatalogue`.
- A source's exception never escapes: the failure is counted in the drop ledger and a warning
  is logged once per source; the source is degraded (still asked, each failure counted) and
  after ``MAX_CONSECUTIVE_FAILURES`` failures in a row it is no longer asked.
- ``shutdown()`` joins the thread within its deadline. In a forked child the sampler starts
  clean: sources drop inherited handles, state is emptied, and the thread is restarted if it
  ran in the parent. The parent's handles are never touched from the child.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from memspan import names
from memspan.drops import LISTENER_ERROR, SOURCE_ERROR, DropLedger
from memspan.fork_safety import reset_in_forked_children
from memspan.metric_catalogue import Cadence, MetricCatalogue, source_cadence
from memspan.sampling.history import MaxHistory
from memspan.sampling.state import SamplerState
from memspan.sources import STANDARD_SOURCES
from memspan.sources.base import MemorySource, Reading

_logger = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 100


@dataclass(frozen=True, slots=True)
class CounterIncrease:
    """An allocator retry/OOM or cgroup oom_kill counter that rose between two samples."""

    metric: str
    attributes: tuple[tuple[str, str], ...]
    before: int
    after: int


SampleListener = Callable[[Sequence[Reading], Sequence[CounterIncrease]], None]


class _SourceSlot:
    __slots__ = ("disabled", "failures", "next_due", "slow", "source", "warned")

    def __init__(self, source: MemorySource, slow: bool) -> None:
        self.source = source
        self.slow = slow
        self.failures = 0
        self.disabled = False
        self.warned = False
        self.next_due = 0.0


class Sampler:
    """Samples every source on a fixed-rate schedule into a :class:`SamplerState`."""

    def __init__(
        self,
        sources: Sequence[MemorySource],
        *,
        interval_s: float = 0.1,
        slow_interval_s: float = 1.0,
        ledger: DropLedger | None = None,
        catalogue: MetricCatalogue | None = None,
    ) -> None:
        """``catalogue`` defaults to the rows of the standard sources and of ``sources``."""
        if interval_s <= 0:
            raise ValueError(f"sampler interval must be > 0 seconds, got {interval_s!r}")
        if slow_interval_s <= 0:
            raise ValueError(f"slow sampler interval must be > 0 seconds, got {slow_interval_s!r}")
        self.interval_s = interval_s
        self.slow_interval_s = slow_interval_s
        self.catalogue = (catalogue if catalogue is not None
                          else MetricCatalogue.for_sources(STANDARD_SOURCES, sources))
        self.state = SamplerState(self.catalogue.window_peaks)
        self.ledger = ledger if ledger is not None else DropLedger()
        self._slots = [_SourceSlot(s, source_cadence(s) is Cadence.SLOW) for s in sources]
        self._listeners: list[SampleListener] = []
        self._counters: dict[tuple[str, tuple[tuple[str, str], ...]], int] = {}
        self._histories: dict[tuple[str, tuple[tuple[str, str], ...]], MaxHistory] = {}
        self._history_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()
        self.ticks = 0
        self._pid = os.getpid()
        reset_in_forked_children(self)

    @property
    def sources(self) -> list[MemorySource]:
        return [slot.source for slot in self._slots]

    def add_listener(self, listener: SampleListener) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: SampleListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def history(self, metric: str, attributes: tuple[tuple[str, str], ...] = ()) -> MaxHistory:
        """The max-history a phase reads for one series (created on first use)."""
        key = (metric, attributes)
        history = self._histories.get(key)
        if history is None:
            with self._history_lock:
                history = self._histories.setdefault(key, MaxHistory())
        return history

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        with self._lifecycle:
            if self.running:
                return
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="memspan-sampler", daemon=True
            )
            self._thread.start()

    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Stop the thread; True when it ended within ``timeout_s``."""
        with self._lifecycle:
            self._stop.set()
            thread = self._thread
            self._thread = None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            return not thread.is_alive()
        return True

    def close(self) -> None:
        """Stop the thread and release every source's handles (idempotent)."""
        self.shutdown()
        for slot in self._slots:
            try:
                slot.source.close()
            except Exception:  # a closing source must not stop the others closing
                _logger.debug("memspan: closing source %s failed", slot.source.name, exc_info=True)

    def _after_fork_in_child(self) -> None:
        was_running = self._thread is not None
        self._thread = None
        self._stop = threading.Event()
        self._lifecycle = threading.Lock()
        self._history_lock = threading.Lock()
        self._pid = os.getpid()
        self.state = SamplerState(self.catalogue.window_peaks)
        self._counters = {}
        self._histories = {}
        for slot in self._slots:
            slot.next_due = 0.0
            try:
                slot.source.after_fork()
            except Exception:
                slot.disabled = True
        if was_running:
            try:
                self.start()
            except RuntimeError:  # pragma: no cover - interpreter shutting down
                pass

    # -- the loop ----------------------------------------------------------------------------
    def _run(self) -> None:
        start = time.monotonic()
        tick = 0
        while not self._stop.is_set():
            self.sample_once()
            tick += 1
            due = start + tick * self.interval_s
            now = time.monotonic()
            if now > due:  # stalled: skip the missed ticks instead of bursting
                tick = int((now - start) / self.interval_s) + 1
                due = start + tick * self.interval_s
            self._stop.wait(due - now)

    def sample_once(self) -> list[Reading]:
        """Sample every due source once (the thread calls this; tests may call it)."""
        now = time.monotonic()
        readings: list[Reading] = []
        for slot in self._slots:
            if slot.disabled or (slot.slow and now < slot.next_due):
                continue
            if slot.slow:
                slot.next_due = now + self.slow_interval_s
            try:
                readings.extend(slot.source.sample())
            except Exception as error:
                self._source_failed(slot, error)
            else:
                slot.failures = 0
        self.ticks += 1
        self.state.update(readings)
        self._record_histories(readings)
        increases = self._counter_increases(readings)
        for listener in list(self._listeners):
            try:
                listener(readings, increases)
            except Exception:
                self.ledger.add(LISTENER_ERROR, warning="a sample listener raised; ignored")
        return readings

    def _record_histories(self, readings: Sequence[Reading]) -> None:
        for reading in readings:
            history = self._histories.get((reading.metric, reading.attributes))
            if history is not None:
                history.record(int(reading.value))

    def _counter_increases(self, readings: Sequence[Reading]) -> list[CounterIncrease]:
        increases = []
        counters = self.catalogue.counters
        for reading in readings:
            if reading.metric not in counters:
                continue
            key = (reading.metric, reading.attributes)
            value = int(reading.value)
            before = self._counters.get(key)
            self._counters[key] = value
            if before is not None and value > before:
                increases.append(CounterIncrease(reading.metric, reading.attributes, before, value))
        return increases

    def _source_failed(self, slot: _SourceSlot, error: Exception) -> None:
        slot.failures += 1
        self.ledger.add(SOURCE_ERROR)
        if not slot.warned:
            slot.warned = True
            _logger.warning(
                "memspan: memory source %r failed (%s: %s); it is marked degraded and its "
                "failures are counted in %s",
                slot.source.name, type(error).__name__, error, names.RECORDER_DROPPED,
            )
        if slot.failures >= MAX_CONSECUTIVE_FAILURES:
            slot.disabled = True
            _logger.warning(
                "memspan: memory source %r failed %d times in a row; it is no longer sampled",
                slot.source.name, slot.failures,
            )
