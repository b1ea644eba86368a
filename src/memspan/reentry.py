"""A lock that never makes a thread wait for itself.

A signal handler runs on the main thread between two bytecodes of whatever it interrupted. If
that code held an ordinary lock and the handler opens a phase that needs the same lock, the
thread waits for itself forever. :class:`ReentryGuard` instead tells the second entry, at
once, that its own thread is already inside: the caller then skips its work (and counts it)
rather than deadlock or see a half-updated structure.

Invariants: other threads wait as for any lock; the holder's own re-entry never blocks and
never runs inside the critical section; a forked child gets a fresh, unheld lock (the thread
that held it does not exist there).
"""

from __future__ import annotations

import threading

from memspan.fork_safety import reset_in_forked_children


class ReentryGuard:
    """``if guard.enter(): try: ... finally: guard.exit()``; False: this thread is inside."""

    __slots__ = ("__weakref__", "_busy", "_lock")

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._busy = False
        reset_in_forked_children(self)

    def enter(self) -> bool:
        """Take the lock (waiting for other threads); False, at once and holding nothing,
        when this thread already holds it."""
        self._lock.acquire()
        if self._busy:  # only the holder can see this while holding the RLock
            self._lock.release()
            return False
        self._busy = True
        return True

    def exit(self) -> None:
        self._busy = False
        self._lock.release()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.RLock()
        self._busy = False
