"""A phase opened now and closed later through a handle: ``enter_phase()``'s return value.

Invariant: ``close()`` and ``fail()`` act once; the handle never raises because of the
order in which phases are closed (the core resolves mis-nesting and counts it).
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from memspan.phases.validation import format_path


class PhaseProtocolError(RuntimeError):
    """Raised when phase handles are closed incorrectly."""


class PhaseHandle:
    """A closeable phase handle returned by ``enter_phase()``.

    ``close()`` is idempotent: the first call closes the phase and returns what the close
    callback returned; later calls return ``None``. Used as a context manager, an exception
    leaving the block is recorded on the phase before it closes and then propagates
    unchanged.
    """

    __slots__ = ("_close_callback", "_closed", "_fail_callback", "name", "path", "scope_id")

    def __init__(
        self,
        *,
        scope_id: str,
        name: str,
        path: tuple[str, ...],
        close_callback: Callable[[], Any],
        fail_callback: Callable[[BaseException], Any] | None = None,
    ) -> None:
        self.scope_id = scope_id
        self.name = name
        self.path = path
        self._close_callback = close_callback
        self._fail_callback = fail_callback
        self._closed = False

    @property
    def phase_path(self) -> str:
        """Return the formatted phase path."""
        return format_path(self.path)

    @property
    def closed(self) -> bool:
        """Return True once the handle has been closed."""
        return self._closed

    def close(self) -> Any:
        """Close the phase handle once."""
        if self._closed:
            return None
        result = self._close_callback()
        self._closed = True
        return result

    def fail(self, exc: BaseException) -> Any:
        """Close the phase, recording ``exc`` as the reason it ended (once)."""
        if self._closed:
            return None
        if self._fail_callback is None:
            return self.close()
        self._closed = True
        return self._fail_callback(exc)

    def __enter__(self) -> PhaseHandle:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
        else:
            self.fail(exc)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<PhaseHandle {self.phase_path!r} scope={self.scope_id} {state}>"
