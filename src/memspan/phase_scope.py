"""``with tracker.phase("step"):`` and ``@tracker.phase("step")``.

As a context manager one object is one phase: entering it twice without leaving is a
:class:`PhaseProtocolError`. As a decorator every call opens a fresh phase, so a decorated
function is safe to call from many threads and tasks at once. A decorated generator or
async-generator function is timed over its iteration (from the first ``next`` to
exhaustion or close), not over the call that creates the generator.

Invariant: the user's exception leaves the block unchanged; if memspan cannot open the phase
(a telemetry failure, counted), the block runs without one.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import AsyncGenerator, Generator, Mapping
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from opentelemetry import trace

from memspan.runtime import PhaseProtocolError

if TYPE_CHECKING:
    from memspan.phase_core import PhaseCore
    from memspan.phase_span import PhaseSpan

F = TypeVar("F")

_NEW, _OPEN, _FAILED = 0, 1, 2


class PhaseScope:
    """One phase as a context manager; a phase factory as a decorator."""

    __slots__ = ("_attributes", "_core", "_name", "_phase", "_state", "_trace_root")

    def __init__(self, core: PhaseCore, name: str, attributes: Mapping[str, Any],
                 trace_root: bool | None = None) -> None:
        self._core = core
        self._name = name
        self._attributes = attributes
        self._trace_root = trace_root
        self._phase: PhaseSpan | None = None
        self._state = _NEW

    def __enter__(self) -> PhaseScope:
        return self._enter(sys._getframe(1))

    def _enter(self, frame: FrameType) -> PhaseScope:
        """Open the phase; ``frame`` is the block's (a generator's frame marks the phase)."""
        if self._state != _NEW:
            raise PhaseProtocolError(
                f"phase {self._name!r} is already entered; create one phase() per with-block"
            )
        phase = self._core.open(self._name, self._attributes, self._trace_root, frame)
        self._phase = phase
        self._state = _OPEN if phase is not None else _FAILED
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state, phase = self._state, self._phase
        if state == _NEW:
            raise PhaseProtocolError(f"phase {self._name!r} was exited without being entered")
        self._state, self._phase = _NEW, None
        if phase is not None:
            self._core.close(phase, exc)

    async def __aenter__(self) -> PhaseScope:
        return self._enter(sys._getframe(1))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    @property
    def scope_id(self) -> str | None:
        return self._phase.scope_id if self._phase is not None else None

    @property
    def phase_path(self) -> str | None:
        return self._phase.path_text if self._phase is not None else None

    @property
    def span(self) -> trace.Span | None:
        """The phase's current span (what ``trace.get_current_span()`` returns inside it)."""
        return self._phase

    def __call__(self, function: F) -> F:
        core, name, attributes, root = self._core, self._name, self._attributes, self._trace_root
        if inspect.isasyncgenfunction(function):
            return cast(F, _wrap_async_generator(function, core, name, attributes, root))
        if inspect.isgeneratorfunction(function):

            @functools.wraps(function)
            def generator_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
                with PhaseScope(core, name, attributes, root):
                    return (yield from function(*args, **kwargs))

            return cast(F, generator_wrapper)
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with PhaseScope(core, name, attributes, root):
                    return await function(*args, **kwargs)

            return cast(F, async_wrapper)
        if not callable(function):
            raise TypeError(f"@phase({name!r}) decorates functions, got {function!r}")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with PhaseScope(core, name, attributes, root):
                return function(*args, **kwargs)

        return cast(F, wrapper)


def _wrap_async_generator(function: Any, core: PhaseCore, name: str,
                          attributes: Mapping[str, Any], root: bool | None) -> Any:
    """An async generator that runs ``function``'s inside one phase, delegating sends/throws."""

    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        inner = function(*args, **kwargs)
        async with contextlib.aclosing(inner):
            with PhaseScope(core, name, attributes, root):
                to_send: Any = None
                thrown: BaseException | None = None
                while True:
                    try:
                        if thrown is not None:
                            exception, thrown = thrown, None
                            item = await inner.athrow(exception)
                        else:
                            item = await inner.asend(to_send)
                    except StopAsyncIteration:
                        return
                    try:
                        to_send = yield item
                    except GeneratorExit:
                        raise
                    except BaseException as error:  # thrown in by the consumer: pass it on
                        thrown, to_send = error, None

    return wrapper


class DisabledPhase:
    """What ``memspan.phase`` returns while memspan is disabled (a configuration error):
    a context manager and decorator that does nothing and never raises."""

    __slots__ = ()
    scope_id = None
    phase_path = None
    span = None

    def __enter__(self) -> DisabledPhase:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        return None

    async def __aenter__(self) -> DisabledPhase:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None

    def __call__(self, function: F) -> F:
        return function


DISABLED_PHASE = DisabledPhase()
