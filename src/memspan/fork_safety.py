"""Objects that must start clean in a forked child (threads do not survive a fork).

Invariant: the handler holds only a weak reference, so registering never keeps an object
alive, and an object collected before a fork is simply skipped.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


def reset_in_forked_children(target: ForkAware) -> None:
    """Call ``target._after_fork_in_child()`` in every child this process forks from now on."""
    if not hasattr(os, "register_at_fork"):  # pragma: no cover - not POSIX
        return
    ref = weakref.ref(target)

    def after_in_child() -> None:
        alive = ref()
        if alive is not None:
            alive._after_fork_in_child()

    os.register_at_fork(after_in_child=after_in_child)
