"""Passing signals to the child of ``memspan run`` exactly once.

A signal must reach the child once: a second SIGINT interrupts the ``KeyboardInterrupt``
handler that is saving a checkpoint. So memspan forwards a signal only when the child cannot
have received it itself:

- **memspan is the foreground job of a terminal** (one of stdin/stdout/stderr is a tty whose
  foreground process group is memspan's): the child stays in memspan's process group, so
  job control works as without memspan (Ctrl-C, Ctrl-Z, reading the terminal). A signal the
  terminal generated (``si_code == SI_KERNEL``: Ctrl-C, Ctrl-\\, hang-up) went to the whole
  group, the child included: memspan does not forward it. A signal somebody sent with
  ``kill`` (``SI_USER``, e.g. ``kill -INT <memspan pid>``) is forwarded to the child.
  Where the sender cannot be told (no ``sigtimedwait``, e.g. macOS), the terminal's signals
  (SIGINT, SIGQUIT, SIGHUP) are not forwarded and SIGTERM is.
- **otherwise** (a supervisor, CI, a batch system, a background job): the child gets its
  own process group, so a signal addressed to memspan's pid or to memspan's group never
  reaches it directly. memspan forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to the child's
  process group (what a terminal would do to the job).

How: right after the child starts, memspan blocks these signals and SIGCHLD in its main
thread (threads started later inherit the mask) and waits with ``sigtimedwait``, which
returns each signal with its sender's ``si_code``; SIGCHLD ends the wait. Python-level
handlers stay installed for a signal that arrives before the mask is set.

After the child has exited, a signal still goes to what is left of the child's own process
group (grandchildren still writing output) and is otherwise ignored until memspan exits:
memspan's exit status is the child's, whatever arrives during the post-mortem.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
TERMINAL_GENERATED = frozenset({signal.SIGINT, signal.SIGQUIT, signal.SIGHUP})
#: ``si_code`` of a signal the kernel generated itself (a terminal's Ctrl-C), Linux value.
SI_KERNEL = 0x80
_CAN_WAIT = hasattr(signal, "sigtimedwait") and hasattr(signal, "pthread_sigmask")


def terminal_foreground() -> bool:
    """True when a tty among fds 0-2 has memspan's process group in the foreground."""
    group = os.getpgrp()
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd) and os.tcgetpgrp(fd) == group:
                return True
        except OSError:
            continue
    return False


class SignalForwarder:
    """Forwards signals to the child (see the module docstring); main thread only."""

    def __init__(self, child_pid: int, *, own_group: bool) -> None:
        self.child_pid = child_pid
        self.own_group = own_group
        self.child_exited = False
        self.forwarded: list[int] = []
        self._previous: dict[int, Any] = {}
        self._blocked: set[int] | None = None
        self._main = threading.current_thread() is threading.main_thread()

    def install(self) -> None:
        """Install the fallback handlers and block the signals for ``sigtimedwait``."""
        if not self._main:
            return
        for signum in FORWARDED:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except (OSError, ValueError):
                continue
        if _CAN_WAIT:
            mask = {*FORWARDED, signal.SIGCHLD}
            self._blocked = set(signal.pthread_sigmask(signal.SIG_BLOCK, mask))

    def should_forward(self, signum: int, si_code: int | None = None) -> bool:
        if self.child_exited:
            return self.own_group  # grandchildren still in the child's group
        if self.own_group:
            return True
        if si_code is not None:
            return si_code != SI_KERNEL
        return signum not in TERMINAL_GENERATED

    def forward(self, signum: int, si_code: int | None = None) -> None:
        if not self.should_forward(signum, si_code):
            return
        try:
            if self.own_group:
                os.killpg(self.child_pid, signum)
            else:
                os.kill(self.child_pid, signum)
            self.forwarded.append(signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.forward(signum)

    def wait_for(self, done: Callable[[], bool], poll_s: float = 0.5) -> None:
        """Forward signals until ``done()`` is true (checked on every SIGCHLD and poll)."""
        if self._blocked is None:
            return
        mask = {*FORWARDED, signal.SIGCHLD}
        while not done():
            info = signal.sigtimedwait(mask, poll_s)
            if info is not None and info.si_signo != signal.SIGCHLD:
                self.forward(info.si_signo, info.si_code)

    def restore(self) -> None:
        """Forward what is still pending, unblock, and put the previous handlers back."""
        if self._blocked is not None:
            mask = set(FORWARDED)
            while True:
                info = signal.sigtimedwait(mask, 0)
                if info is None:
                    break
                self.forward(info.si_signo, info.si_code)
            signal.pthread_sigmask(signal.SIG_SETMASK, self._blocked)
            self._blocked = None
        for signum, handler in self._previous.items():
            try:
                signal.signal(signum, handler)
            except (OSError, ValueError):
                continue
        self._previous.clear()
