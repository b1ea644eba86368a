"""Passing signals to the child of ``memspan run`` exactly once.

A signal must reach the child once: a second SIGINT interrupts the ``KeyboardInterrupt``
handler that is saving a checkpoint. So memspan forwards a signal only when the child cannot
have received it itself:

- **memspan is the foreground job of a terminal** (one of stdin/stdout/stderr is a tty whose
  foreground process group is memspan's): the child stays in memspan's process group, so
  job control works as without memspan (Ctrl-C, Ctrl-Z, reading the terminal). The terminal
  delivers SIGINT, SIGQUIT and SIGHUP to the whole group, the child included: memspan does
  not forward them. SIGTERM (never sent by a terminal) is forwarded. Limitation: ``kill -INT
  <memspan pid>`` from elsewhere while memspan runs in a terminal's foreground is not
  forwarded; send SIGTERM.
- **otherwise** (a supervisor, CI, a batch system, a background job): the child gets its
  own process group, so a signal addressed to memspan's pid or to memspan's group never
  reaches it directly. memspan forwards SIGINT, SIGTERM, SIGHUP and SIGQUIT to the child's
  process group (what a terminal would do to the job).

After the child has exited, a signal still goes to what is left of the child's own process
group (grandchildren still writing output) and is otherwise ignored until memspan exits:
memspan's exit status is the child's, whatever arrives during the post-mortem.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
TERMINAL_GENERATED = frozenset({signal.SIGINT, signal.SIGQUIT, signal.SIGHUP})


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
    """Installs the forwarding handlers (main thread only) and restores them on close."""

    def __init__(self, child_pid: int, *, own_group: bool) -> None:
        self.child_pid = child_pid
        self.own_group = own_group
        self.child_exited = False
        self.forwarded: list[int] = []
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in FORWARDED:
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except (OSError, ValueError):
                continue

    def should_forward(self, signum: int) -> bool:
        if self.child_exited:
            return self.own_group  # grandchildren still in the child's group
        return self.own_group or signum not in TERMINAL_GENERATED

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if not self.should_forward(signum):
            return
        try:
            if self.own_group:
                os.killpg(self.child_pid, signum)
            else:
                os.kill(self.child_pid, signum)
            self.forwarded.append(signum)
        except (ProcessLookupError, PermissionError):
            pass

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            try:
                signal.signal(signum, handler)
            except (OSError, ValueError):
                continue
        self._previous.clear()
