"""Fresh memory figures at a phase's entry and exit, and the peak in between.

Invariants:

- Entry and exit read the sources directly (not the last sample): RSS through a kept-open
  ``/proc/self/statm``, the kernel's RSS high-water mark, and, only when the torch backend
  is already initialised, one nested allocator stats call for the current device.
- A phase's peak is exact (``peak_exact=True``) when the high-water mark (allocator peak, or
  ``ru_maxrss`` on the host) rose inside the phase: the new mark is the phase's peak. Else
  it is the highest of the entry, exit and sampler readings taken during the phase, and
  marked inexact. Peak statistics are never reset.
- A figure that cannot be measured is absent from the attributes, never zero.
- Reading never raises into the user's program: a source that fails (a CUDA context broken
  by a device-side assert, say) is counted as ``source_error`` and its figures are absent.
"""

from __future__ import annotations

import signal
from typing import Any

from memspan import names
from memspan.drops import SOURCE_ERROR, DropLedger
from memspan.sampling.history import MaxHistory
from memspan.sampling.sampler import Sampler
from memspan.sources.host import HostMemorySource
from memspan.sources.malloc_info import in_use, malloc_free_bytes
from memspan.sources.torch_allocator import AllocatorFigures, TorchAllocatorSource


class EntryFigures:
    """What was measured when a phase opened."""

    __slots__ = (
        "allocated_history",
        "allocated_tick",
        "allocator",
        "device_index",
        "malloc_free",
        "maxrss",
        "reserved_history",
        "reserved_tick",
        "rss",
        "rss_tick",
    )

    def __init__(self, rss: int | None = None, maxrss: int | None = None,
                 rss_tick: int = 0, malloc_free: int | None = None) -> None:
        self.rss = rss
        self.malloc_free = malloc_free
        self.maxrss = maxrss
        self.rss_tick = rss_tick
        self.allocator: AllocatorFigures | None = None
        self.device_index = 0
        self.allocated_history: MaxHistory | None = None
        self.reserved_history: MaxHistory | None = None
        self.allocated_tick = 0
        self.reserved_tick = 0


class ExitFigures:
    """What a phase measured when it closed, as typed fields (``None``: not measured).

    ``primary_*`` is the allocator figure on a device and, on a host, the memory in use: RSS
    less the free bytes the C allocator keeps in its arenas (RSS alone where the C library
    cannot tell them). ``primary_start``/``primary_end`` give the retained bytes and the leak
    verdicts; ``primary_peak`` (RSS's peak on a host) the phase histograms.
    """

    __slots__ = ("allocated_end", "allocated_peak", "device", "malloc_free_end", "peak_exact",
                 "primary_end", "primary_peak", "primary_start", "reserved_end",
                 "reserved_peak", "retained", "rss_end", "rss_peak")

    def __init__(self, device: str, rss_end: int | None = None,
                 rss_peak: int | None = None) -> None:
        """``rss_peak`` is also the primary peak until allocator figures replace it."""
        self.device = device
        self.rss_end = rss_end
        self.rss_peak = rss_peak
        self.malloc_free_end: int | None = None
        self.allocated_end: int | None = None
        self.allocated_peak: int | None = None
        self.reserved_end: int | None = None
        self.reserved_peak: int | None = None
        self.peak_exact: bool | None = None
        self.retained: int | None = None
        self.primary_start: int | None = None
        self.primary_end: int | None = None
        self.primary_peak: int | None = rss_peak

    def add_attributes(self, attributes: dict[str, Any]) -> None:
        """Add the ``.end``/``.peak`` figures, ``peak_exact`` and ``retained`` to a span's."""
        for key, value in ((names.RSS_END, self.rss_end), (names.RSS_PEAK, self.rss_peak),
                           (names.MALLOC_FREE_END, self.malloc_free_end),
                           (names.ALLOCATED_END, self.allocated_end),
                           (names.ALLOCATED_PEAK, self.allocated_peak),
                           (names.RESERVED_END, self.reserved_end),
                           (names.RESERVED_PEAK, self.reserved_peak),
                           (names.PEAK_EXACT, self.peak_exact),
                           (names.RETAINED, self.retained)):
            if value is not None:
                attributes[key] = value

    @property
    def attributes(self) -> dict[str, Any]:
        """The exit attributes as a new dict (for readers that want them by name)."""
        out: dict[str, Any] = {}
        self.add_attributes(out)
        return out


def phase_peak(
    start: int | None,
    end: int | None,
    mark_start: int | None,
    mark_end: int | None,
    history: MaxHistory | None,
    tick: int,
) -> tuple[int | None, bool]:
    """The peak between entry and exit, and whether it is exact (see module docstring)."""
    if start is None or end is None:
        return None, False
    if mark_start is not None and mark_end is not None and mark_end > mark_start:
        # The mark rose inside the phase. (The kernel updates ru_maxrss lazily, so the
        # exit reading can be a little above it: the peak is at least that.)
        return max(mark_end, start, end), True
    best = max(start, end)
    if history is not None:
        sampled = history.max_since(tick)
        if sampled is not None and sampled > best:
            best = sampled
    return best, False


def raised_by_user_code(error: BaseException) -> bool:
    """Whether ``error`` was raised by one of the program's signal handlers (a step timeout
    on ``SIGALRM``, say) that ran while memspan read figures: that exception belongs to the
    program and must reach it. Every other failure of a reading is memspan's to count."""
    handlers = set()
    for number in signal.valid_signals():
        try:
            handler = signal.getsignal(number)
        except (OSError, ValueError):
            continue
        code = getattr(handler, "__code__", None)
        if code is not None:
            handlers.add(code)
    if not handlers:
        return False
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in handlers:
            return True
        tb = tb.tb_next
    return False


class BoundaryReader:
    """Reads entry/exit figures for phases from the host and torch sources."""

    def __init__(
        self,
        host: HostMemorySource | None,
        torch: TorchAllocatorSource | None,
        sampler: Sampler | None,
        ledger: DropLedger | None = None,
    ) -> None:
        self._ledger = ledger if ledger is not None else DropLedger()
        self._host = host
        self._torch = torch
        self._sampler = sampler
        self._rss_history = (
            sampler.history(names.PROCESS_MEMORY_USAGE) if sampler is not None else None
        )

    def _failed(self, what: str, error: Exception) -> None:
        if raised_by_user_code(error):
            raise error  # a signal handler of the user's ran here: its exception is theirs
        self._ledger.add(SOURCE_ERROR, warning=f"reading {what} at a phase boundary failed "
                         f"({type(error).__name__}: {error}); its figures are left out")

    def entry(self) -> EntryFigures:
        rss = maxrss = free = None
        host = self._host
        if host is not None:
            try:
                rss, maxrss = host.rss_and_peak()
            except Exception as error:
                self._failed("host memory", error)
            free = malloc_free_bytes()
        history = self._rss_history
        figures = EntryFigures(rss, maxrss, history.tick if history is not None else 0, free)
        torch = self._torch
        if torch is not None:
            try:
                if torch.initialized():
                    self._torch_entry(torch, figures)
            except Exception as error:
                figures.allocator = None
                self._failed("the torch allocator", error)
        return figures

    def _torch_entry(self, torch: TorchAllocatorSource, figures: EntryFigures) -> None:
        device = torch.api.current_device()
        figures.device_index = device
        figures.allocator = torch.read_device(device)
        if self._sampler is not None:
            attrs = torch.series_attributes(device)
            alloc = self._sampler.history(names.TORCH_ALLOCATED, attrs)
            reserved = self._sampler.history(names.TORCH_RESERVED, attrs)
            figures.allocated_history, figures.reserved_history = alloc, reserved
            figures.allocated_tick, figures.reserved_tick = alloc.tick, reserved.tick

    @staticmethod
    def entry_attributes(figures: EntryFigures, attributes: dict[str, Any]) -> None:
        """Add the ``.start`` figures and the device to a span's start attributes."""
        if figures.rss is not None:
            attributes[names.RSS_START] = figures.rss
            if figures.malloc_free is not None:
                attributes[names.MALLOC_FREE_START] = figures.malloc_free
        allocator = figures.allocator
        if allocator is not None:
            attributes[names.MEMORY_DEVICE] = allocator.device
            attributes[names.ALLOCATED_START] = allocator.allocated
            attributes[names.RESERVED_START] = allocator.reserved
        else:
            attributes[names.MEMORY_DEVICE] = "host"

    def exit(self, start: EntryFigures) -> ExitFigures:
        rss = maxrss = free = None
        if self._host is not None:
            try:
                rss, maxrss = self._host.rss_and_peak()
            except Exception as error:
                self._failed("host memory", error)
            free = malloc_free_bytes()
        rss_peak, rss_exact = phase_peak(
            start.rss, rss, start.maxrss, maxrss, self._rss_history, start.rss_tick
        )
        begin = start.allocator
        end = None
        if begin is not None and self._torch is not None:
            try:
                end = self._torch.read_device(start.device_index)
            except Exception as error:
                self._failed("the torch allocator", error)
        if begin is not None and end is not None:
            figures = ExitFigures(begin.device, rss, rss_peak)
            figures.malloc_free_end = free
            alloc_peak, figures.peak_exact = phase_peak(
                begin.allocated, end.allocated, begin.allocated_peak, end.allocated_peak,
                start.allocated_history, start.allocated_tick,
            )
            figures.reserved_peak, _ = phase_peak(
                begin.reserved, end.reserved, begin.reserved_peak, end.reserved_peak,
                start.reserved_history, start.reserved_tick,
            )
            figures.allocated_end, figures.allocated_peak = end.allocated, alloc_peak
            figures.reserved_end = end.reserved
            figures.retained = end.allocated - begin.allocated
            figures.primary_start, figures.primary_end = begin.allocated, end.allocated
            figures.primary_peak = alloc_peak
            return figures
        figures = ExitFigures("host", rss, rss_peak)
        figures.malloc_free_end = free
        if rss_peak is not None and start.rss is not None and rss is not None:
            figures.peak_exact = rss_exact
            begin_in_use, end_in_use = in_use(start.rss, start.malloc_free), in_use(rss, free)
            figures.retained = end_in_use - begin_in_use
            figures.primary_start, figures.primary_end = begin_in_use, end_in_use
        return figures
