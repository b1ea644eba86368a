"""The memory reserve: address space held back so an OOM bundle can be written when the host
has none left.

Invariants:

- While the reserve is held, ``RESERVE_BYTES`` of address space (and, under strict
  overcommit, of commit charge) belong to memspan and to nothing else. The block is never
  written, so it costs no resident memory: it is a reservation, not a buffer.
- :meth:`MemoryReserve.release` frees it at once, allocating nothing (it only drops the
  last reference), so it still works when the failed allocation was the program's last. It
  is called first thing when a ``MemoryError`` reaches the flight recorder, before the
  exception is classified, the ring is read or the bundle is written.
- After a release the reserve is taken back by :meth:`MemoryReserve.restore`, which never
  raises; it is tried again (at most once a second, from the sampler thread) while memory is
  still exhausted, so the reserve never competes with the program's own recovery.
- What it guarantees, and what not (``docs/oom.md``): a ``MemoryError`` raised because the
  address space or commit limit is exhausted (``RLIMIT_AS``, ``vm.overcommit_memory=2``)
  finds the reserve to write its bundle with. A cgroup memory limit ends a process through
  the kernel OOM killer (SIGKILL) instead; no reserve helps there, breadcrumbs do.
"""

from __future__ import annotations

import threading
import time
from typing import Final

#: bytes held back for writing a bundle after a host ``MemoryError`` (the bundle writer
#: streams events and writes one file at a time, so its peak stays well under this)
RESERVE_BYTES: Final = 16 << 20
#: the least time between two attempts to take the reserve back while memory is short
RESTORE_INTERVAL_S: Final = 1.0


class MemoryReserve:
    """A block of untouched memory, dropped on a host OOM and taken back afterwards."""

    def __init__(self, size: int = RESERVE_BYTES) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._block: bytes | None = None
        self._next_try = 0.0
        #: times the reserve was released for an OOM
        self.releases = 0
        self.restore(force=True)

    @property
    def held(self) -> bool:
        return self._block is not None

    def release(self) -> bool:
        """Free the reserve now (no allocation); True when it was held."""
        block, self._block = self._block, None
        if block is None:
            return False
        self.releases += 1
        del block
        return True

    def restore(self, *, force: bool = False) -> bool:
        """Take the reserve back if memory allows (never raises); True when it is held.

        Unless ``force``, at most one attempt per :data:`RESTORE_INTERVAL_S`."""
        if self._block is not None or self.size <= 0:
            return self._block is not None
        now = time.monotonic()
        if not force and now < self._next_try:
            return False
        if not self._lock.acquire(blocking=False):
            return False
        try:
            self._next_try = now + RESTORE_INTERVAL_S
            if self._block is None:
                self._block = bytes(self.size)  # calloc: untouched zero pages, no RSS
        except MemoryError:
            return False
        finally:
            self._lock.release()
        return True


_process_reserve: MemoryReserve | None = None
_process_lock = threading.Lock()


def process_reserve() -> MemoryReserve:
    """The one reserve of this process (created on first use; a forked child shares the
    parent's untouched pages copy-on-write, which costs it nothing)."""
    global _process_reserve
    with _process_lock:
        if _process_reserve is None:
            _process_reserve = MemoryReserve()
        return _process_reserve
