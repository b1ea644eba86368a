"""``with tracker.phase("step"):`` and ``@tracker.phase("step")``.

As a context manager one object is one phase: entering it twice without leaving is a
:class:`PhaseProtocolError`. As a decorator every call opens a fresh phase, so a decorated
function is safe to call from many threads and tasks at once. A decorated generator or
async-generator function is timed over its iteration (from the first ``next`` to
exhaustion or close), not over the call that creates the generator.

Invariant: the user's exception leaves the block unchanged; if memspan cannot open the phase
(a telemetry failure, counted, or memspan disabled by a configuration error), the block runs
without one.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

from opentelemetry import context as otel_context
from opentelemetry import trace

from memspan.phases.handle import PhaseProtocolError

if TYPE_CHECKING:
    from memspan.phases.core import PhaseCore
    from memspan.phases.record import PhaseSpan

F = TypeVar("F")

_NEW, _OPEN, _FAILED = 0, 1, 2


class PhaseScope:
    """One phase as a context manager; a phase factory as a decorator.

    Bound to one tracker's phase core, or (``memspan.phase``) resolving the default tracker at
    each use, so a function decorated at import time joins the session ``configure()`` starts
    later, and runs without a phase while memspan is disabled.
    """

    __slots__ = ("_attributes", "_core", "_core_of", "_entered", "_name", "_phase", "_state",
                 "_trace_root")

    def __init__(self, core: PhaseCore | None, name: str, attributes: Mapping[str, Any],
                 trace_root: bool | None = None,
                 core_of: Callable[[], PhaseCore | None] | None = None) -> None:
        self._core = core
        self._core_of = core_of
        self._name = name
        self._attributes = attributes
        self._trace_root = trace_root
        self._phase: PhaseSpan | None = None
        self._entered: PhaseCore | None = None
        self._state = _NEW

    def __enter__(self) -> PhaseScope:
        return self._enter(sys._getframe(1))

    def _enter(self, frame: FrameType) -> PhaseScope:
        """Open the phase; ``frame`` is the block's (a generator's frame marks the phase).

        An exception arriving while the phase is being made current (Ctrl-C, a signal
        handler's) leaves the context as it was: ``__exit__`` does not run when ``__enter__``
        raises, so nothing else would take the phase off again.
        """
        if self._state != _NEW:
            raise PhaseProtocolError(
                f"phase {self._name!r} is already entered; create one phase() per with-block"
            )
        core = self._core
        if core is None:
            core = self._core_of() if self._core_of is not None else None
            if core is None:
                self._state = _FAILED
                return self
        before = otel_context.get_current()
        try:
            phase = core.open(self._name, self._attributes, self._trace_root, frame,
                              context=before)
            self._phase, self._entered = phase, core
            self._state = _OPEN if phase is not None else _FAILED
        except BaseException:
            if otel_context.get_current() is not before:
                otel_context.attach(before)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        state, phase, core = self._state, self._phase, self._entered
        if state == _NEW:
            raise PhaseProtocolError(f"phase {self._name!r} was exited without being entered")
        self._state, self._phase, self._entered = _NEW, None, None
        if phase is not None and core is not None:
            core.close(phase, exc)

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
        core_of = self._core_of
        if inspect.isasyncgenfunction(function):
            return cast(F, _wrap_async_generator(function, core, name, attributes, root,
                                                 core_of))
        if inspect.isgeneratorfunction(function):

            @functools.wraps(function)
            def generator_wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
                with PhaseScope(core, name, attributes, root, core_of):
                    return (yield from function(*args, **kwargs))

            return cast(F, generator_wrapper)
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                with PhaseScope(core, name, attributes, root, core_of):
                    return await function(*args, **kwargs)

            return cast(F, async_wrapper)
        if not callable(function):
            raise TypeError(f"@phase({name!r}) decorates functions, got {function!r}")

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with PhaseScope(core, name, attributes, root, core_of):
                return function(*args, **kwargs)

        return cast(F, wrapper)


def _wrap_async_generator(function: Any, core: PhaseCore | None, name: str,
                          attributes: Mapping[str, Any], root: bool | None,
                          core_of: Callable[[], PhaseCore | None] | None) -> Any:
    """An async generator that runs ``function``'s inside one phase, delegating sends/throws."""

    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        inner = function(*args, **kwargs)
        async with contextlib.aclosing(inner):
            with PhaseScope(core, name, attributes, root, core_of):
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
