"""Host memory of this process: resident set size now, and the process's peak.

On Linux RSS comes from ``os.pread`` on a kept-open ``/proc/self/statm`` (about 1 µs; an
``open().read()`` costs about 9). The descriptor is reopened after ``fork()``: it was opened
through ``/proc/self`` and would otherwise keep reading the parent. Elsewhere RSS comes from
psutil when installed, and is absent otherwise. Peak RSS comes from ``getrusage``.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Sequence
from typing import Any

from memspan import names
from memspan.metric_catalogue import BYTES, Cadence, InstrumentKind, MetricRow
from memspan.sources.base import DeviceIdentity, Reading, SourceStatus

try:
    import resource as _resource
except ImportError:  # pragma: no cover - Windows
    _resource = None  # type: ignore[assignment]

_RUSAGE_SELF = _resource.RUSAGE_SELF if _resource is not None else 0
# ru_maxrss is KiB on Linux and bytes on macOS.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024


class HostMemorySource:
    """RSS and peak RSS of the current process."""

    name = "host"
    cadence: Cadence = Cadence.FAST
    metrics: tuple[MetricRow, ...] = (
        MetricRow(names.PROCESS_MEMORY_USAGE, InstrumentKind.UP_DOWN_COUNTER, BYTES,
                  "Resident set size of this process"),
        MetricRow(names.PROCESS_MEMORY_WINDOW_PEAK, InstrumentKind.GAUGE, BYTES,
                  "Highest RSS since the previous export", window_peak=True),
    )

    def __init__(self, proc_root: str = "/proc") -> None:
        self._statm_path = os.path.join(proc_root, "self", "statm")
        self._page_size = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self._fd: int | None = None
        self._pid = -1
        self._psutil_process: Any = None
        self._last_peak = -1
        self._reopen_lock = threading.Lock()
        self.after_fork()

    def probe(self) -> SourceStatus:
        if self.rss_bytes() is not None:
            return SourceStatus(True)
        return SourceStatus(False, f"neither {self._statm_path} nor psutil is readable")

    def devices(self) -> Sequence[DeviceIdentity]:
        return ()

    def capabilities(self) -> frozenset[str]:
        return frozenset({names.PROCESS_MEMORY_USAGE, names.PROCESS_MEMORY_WINDOW_PEAK})

    def rss_bytes(self) -> int | None:
        """Current resident set size, or None when this host cannot tell."""
        if self._pid != os.getpid():
            self.after_fork()
        fd = self._fd
        if fd is not None:
            try:
                data = os.pread(fd, 64, 0)
                return int(data.split(None, 2)[1]) * self._page_size
            except (OSError, ValueError, IndexError):
                return None
        if self._psutil_process is not None:
            return int(self._psutil_process.memory_info().rss)
        return None

    def rss_and_peak(self) -> tuple[int | None, int | None]:
        """(RSS now, the kernel's RSS high-water mark): both phase-boundary readings in one
        call, the cheapest way this host offers (one ``pread`` and one ``getrusage``)."""
        if self._pid != os.getpid():
            self.after_fork()
        fd = self._fd
        rss: int | None = None
        if fd is not None:
            try:
                rss = int(os.pread(fd, 64, 0).split(None, 2)[1]) * self._page_size
            except (OSError, ValueError, IndexError):
                rss = None
        elif self._psutil_process is not None:
            rss = int(self._psutil_process.memory_info().rss)
        if _resource is None:  # pragma: no cover
            return rss, None
        return rss, _resource.getrusage(_RUSAGE_SELF).ru_maxrss * _MAXRSS_UNIT

    @staticmethod
    def peak_rss_bytes() -> int | None:
        """Highest RSS of this process's lifetime (the kernel's high-water mark)."""
        if _resource is None:  # pragma: no cover
            return None
        return int(_resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss) * _MAXRSS_UNIT

    def sample(self) -> Sequence[Reading]:
        rss = self.rss_bytes()
        if rss is None:
            return ()
        # The kernel's high-water mark only rises; when it rose since the previous sample,
        # the new value is the exact peak of the interval in between.
        peak = self.peak_rss_bytes()
        window_peak = rss
        if peak is not None:
            if peak > self._last_peak >= 0:
                window_peak = max(rss, peak)
            self._last_peak = peak
        return (
            Reading(names.PROCESS_MEMORY_USAGE, rss),
            Reading(names.PROCESS_MEMORY_WINDOW_PEAK, window_peak),
        )

    def snapshot(self) -> dict[str, Any]:
        return {"rss_bytes": self.rss_bytes(), "peak_rss_bytes": self.peak_rss_bytes()}

    def after_fork(self) -> None:
        """(Re)open ``statm`` for the current process; safe to call from several threads."""
        if self._pid != os.getpid():
            self._reopen_lock = threading.Lock()  # a forked child must not inherit a held lock
        with self._reopen_lock:
            if self._pid == os.getpid() and self._fd is not None:
                return
            self.close()
            self._last_peak = -1
            try:
                self._fd = os.open(self._statm_path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            except OSError:
                self._fd = None
                try:
                    import psutil  # type: ignore[import-untyped]

                    self._psutil_process = psutil.Process()
                except ImportError:
                    self._psutil_process = None
            self._pid = os.getpid()

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
