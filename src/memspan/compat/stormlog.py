"""Stormlog compatibility: its phase runtime API and its OOM recorder names, kept importable.

memspan's own phases (:mod:`memspan.phases`) never raise on mis-nesting and are OTel spans;
``PhaseRecorder`` is Stormlog's strict nesting bookkeeping, kept for programs written
against it (it emits no spans). This keeps Stormlog's phase runtime API (``PhaseRecorder``, ``PhaseToken``,
``PhaseBoundary``, ``PhaseHandle``, ``PhaseProtocolError``) with one change underneath:
nesting lives in the OpenTelemetry context instead of a stack per thread ident.

Invariants:

- The innermost open phase of an execution context is stored in the OTel context under a
  key private to the recorder. Nesting therefore follows ``contextvars``: two asyncio tasks
  each have their own stack, a new thread starts with no open phase (a thread that died with
  a phase open never captures the phases of a thread that reuses its ident), and a phase is
  the parent of work in another thread only when the caller propagated the context.
- A phase closes only on the thread and in the context that opened it, and only while it is
  the innermost open phase there. Anything else raises :class:`PhaseProtocolError`, says what
  the caller did wrong, and changes no state.
- Scope ids are ``"{session_id}:{sequence}"``; the sequence strictly increases for the
  lifetime of the recorder, so an id is never reused, even across :meth:`PhaseRecorder.reset`.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Mapping
from contextvars import Token
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.context import Context

from memspan.names import EventType
from memspan.oom.classify import OOMExceptionClassification, classify_oom_exception
from memspan.oom.recorder import OOMFlightRecorder, OOMFlightRecorderConfig
from memspan.otel_internals import reset_context
from memspan.phases.handle import PhaseHandle, PhaseProtocolError
from memspan.phases.validation import MAX_DEPTH, format_path, validate_phase_name

_MAX_TRACKED_SCOPES = 4096
_MAX_TRACKED_SESSIONS = 256


@dataclass(frozen=True, slots=True)
class PhaseBoundary:
    """Structured boundary payload emitted at each phase enter and exit."""

    event_type: str
    context: str
    metadata: dict[str, Any]
    scope_id: str
    path: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PhaseToken:
    """Opaque runtime token used for strict phase exit semantics."""

    scope_id: str
    session_id: str
    rank: int
    thread_id: int
    name: str


class OpenScope:
    """One open phase. Owned by the recorder; callers hold it only through handles."""

    __slots__ = (
        "attributes",
        "closed",
        "context_token",
        "depth",
        "generation",
        "name",
        "parent",
        "path",
        "path_text",
        "rank",
        "scope_id",
        "sequence",
        "session_id",
        "thread",
        "thread_id",
    )

    def __init__(
        self,
        *,
        scope_id: str,
        sequence: int,
        session_id: str,
        rank: int,
        name: str,
        path: tuple[str, ...],
        parent: OpenScope | None,
        generation: int,
    ) -> None:
        self.scope_id = scope_id
        self.sequence = sequence
        self.session_id = session_id
        self.rank = rank
        self.name = name
        self.path = path
        self.path_text = format_path(path)
        self.depth = len(path)
        self.parent = parent
        self.generation = generation
        self.thread = threading.current_thread()
        self.thread_id = self.thread.ident or 0
        self.closed = False
        #: the phase's user attributes, already cleaned to OTel types (empty when none)
        self.attributes: Mapping[str, Any] = {}
        self.context_token: Token[Context] | None = None

    def token(self) -> PhaseToken:
        return PhaseToken(self.scope_id, self.session_id, self.rank, self.thread_id, self.name)

    def describe(self) -> str:
        return f"phase {self.path_text!r} (scope {self.scope_id})"


class PhaseRecorder:
    """Per-tracker phase nesting state and boundary payload generation."""

    def __init__(self) -> None:
        self._key = otel_context.create_key("memspan-open-phase")
        self._lock = threading.Lock()
        self._sequence = itertools.count(1)
        self._generation = 0
        self._open: dict[str, OpenScope] = {}
        self._sessions: dict[str, int] = {}

    # -- Stormlog API ----------------------------------------------------------------------
    def reset(self) -> None:
        """Drop all active phase scopes for a new tracker session.

        Phases opened before the reset can no longer be closed through the recorder (they
        raise :class:`PhaseProtocolError`) and are no longer anyone's parent.
        """
        with self._lock:
            self._generation += 1
            self._open.clear()

    def enter(
        self,
        *,
        session_id: str,
        rank: int,
        name: str,
        attrs: Mapping[str, Any] | None = None,
    ) -> tuple[PhaseToken, PhaseBoundary]:
        """Open a phase in the current context; return its token and its start boundary."""
        scope = self.open_scope(session_id=session_id, rank=rank, name=name)
        return scope.token(), self.boundary(EventType.PHASE_START, scope, attrs)

    def enter_phase(
        self,
        *,
        session_id: str,
        rank: int,
        name: str,
        metadata: Mapping[str, Any] | None = None,
    ) -> PhaseBoundary:
        """Register one nested phase enter transition."""
        return self.enter(session_id=session_id, rank=rank, name=name, attrs=metadata)[1]

    def exit(self, token: PhaseToken) -> PhaseBoundary:
        """Close the phase ``token`` names; it must be the innermost one open here."""
        scope = self._lookup(token.scope_id, token.session_id)
        self._require_thread(scope, token.thread_id)
        self.close_scope(scope)
        return self.boundary(EventType.PHASE_END, scope, None)

    def exit_phase(
        self,
        *,
        session_id: str,
        rank: int,
        scope_id: str,
        thread_id: int,
    ) -> PhaseBoundary:
        """Register one nested phase exit transition."""
        scope = self._lookup(scope_id, session_id)
        if scope.rank != rank:
            raise PhaseProtocolError(
                f"{scope.describe()} was opened by rank {scope.rank}, not rank {rank}"
            )
        self._require_thread(scope, thread_id)
        self.close_scope(scope)
        return self.boundary(EventType.PHASE_END, scope, None)

    # -- memspan internals -----------------------------------------------------------------
    def current(self) -> OpenScope | None:
        """The innermost open phase of the current context, if any."""
        scope = otel_context.get_value(self._key)
        if isinstance(scope, OpenScope) and scope.generation == self._generation:
            return scope
        return None

    def open_scope(self, *, session_id: str, rank: int, name: str) -> OpenScope:
        """Open a phase and make it the innermost one of the current context."""
        trimmed = validate_phase_name(name)
        parent = self.current()
        if parent is not None and parent.depth >= MAX_DEPTH:
            raise PhaseProtocolError(
                f"cannot open phase {trimmed!r}: {MAX_DEPTH} phases are already open in this "
                f"context (innermost {parent.path_text[-200:]!r}); are phases left unclosed?"
            )
        path = (*parent.path, trimmed) if parent is not None else (trimmed,)
        sequence = next(self._sequence)
        scope = OpenScope(
            scope_id=f"{session_id}:{sequence}",
            sequence=sequence,
            session_id=session_id,
            rank=rank,
            name=trimmed,
            path=path,
            parent=parent,
            generation=self._generation,
        )
        scope.context_token = otel_context.attach(otel_context.set_value(self._key, scope))
        with self._lock:
            if len(self._open) >= _MAX_TRACKED_SCOPES:
                self._forget_dead_threads()
            self._open[scope.scope_id] = scope
            if self._sessions.get(session_id, 0) < sequence:
                if session_id not in self._sessions and len(self._sessions) >= _MAX_TRACKED_SESSIONS:
                    self._sessions.pop(next(iter(self._sessions)))
                self._sessions[session_id] = sequence
        return scope

    def close_scope(self, scope: OpenScope, *, unwinding: bool = False) -> None:
        """Close ``scope`` after checking the protocol; on error nothing changes.

        With ``unwinding`` (an exception is escaping the phase) the LIFO check is skipped:
        phases the user left open inside this one are abandoned with it, so the context is
        restored to the state before this phase was entered. If the protocol is broken in
        another way while unwinding, the context is still restored where that is possible
        (same thread), the scope is marked closed, and the error is raised for the caller
        to report.
        """
        problem = self._protocol_problem(scope, unwinding)
        if problem is not None:
            if unwinding and not scope.closed and threading.current_thread() is scope.thread:
                self._finish(scope, ignore_wrong_context=True)
            raise PhaseProtocolError(problem)
        self._finish(scope, ignore_wrong_context=False)

    def _protocol_problem(self, scope: OpenScope, unwinding: bool) -> str | None:
        if scope.closed:
            return f"{scope.describe()} is already closed"
        if scope.generation != self._generation:
            return f"{scope.describe()} was dropped by PhaseRecorder.reset(); it cannot be closed"
        current_thread = threading.current_thread()
        if current_thread is not scope.thread:
            return (
                f"{scope.describe()} was opened on thread {scope.thread.name!r} "
                f"and cannot be closed from thread {current_thread.name!r}; "
                "close it on the thread that opened it"
            )
        innermost = self.current()
        if innermost is not scope and not unwinding:
            if innermost is not None and _has_ancestor(innermost, scope):
                return (
                    f"{scope.describe()} closed out of order: {innermost.describe()} "
                    "is still open inside it; close the innermost phase first"
                )
            return (
                f"{scope.describe()} is not open in the current context "
                "(was it opened in another asyncio task or context?)"
            )
        return None

    def _finish(self, scope: OpenScope, *, ignore_wrong_context: bool) -> None:
        assert scope.context_token is not None
        try:
            reset_context(scope.context_token)
        except (ValueError, RuntimeError):
            if not ignore_wrong_context:
                raise PhaseProtocolError(
                    f"{scope.describe()} was opened in another context (another asyncio "
                    "task?) and must be closed there"
                ) from None
        scope.closed = True
        with self._lock:
            self._open.pop(scope.scope_id, None)

    @staticmethod
    def boundary(
        event_type: EventType, scope: OpenScope, attrs: Mapping[str, Any] | None
    ) -> PhaseBoundary:
        metadata: dict[str, Any] = {
            "name": scope.name,
            "depth": scope.depth,
            "session_id": scope.session_id,
            "rank": scope.rank,
            "thread_id": scope.thread_id,
            "parent_scope_id": scope.parent.scope_id if scope.parent else None,
        }
        if attrs:
            metadata["attrs"] = dict(attrs)
        return PhaseBoundary(event_type.value, scope.path_text, metadata, scope.scope_id, scope.path)

    def _lookup(self, scope_id: str, session_id: str) -> OpenScope:
        with self._lock:
            scope = self._open.get(scope_id)
            issued = self._sessions.get(session_id)
        if scope is not None:
            if scope.session_id != session_id:
                raise PhaseProtocolError(
                    f"{scope.describe()} belongs to session {scope.session_id!r}, "
                    f"not {session_id!r}"
                )
            return scope
        prefix, _, sequence_text = scope_id.rpartition(":")
        if (prefix == session_id and issued is not None and sequence_text.isdigit()
                and int(sequence_text) <= issued):
            raise PhaseProtocolError(
                f"scope {scope_id} is already closed (or was dropped by reset(), "
                "or its thread ended)"
            )
        raise PhaseProtocolError(
            f"unknown scope {scope_id!r} for session {session_id!r}: "
            "it was never opened by this recorder"
        )

    @staticmethod
    def _require_thread(scope: OpenScope, thread_id: int) -> None:
        if scope.thread_id != thread_id:
            raise PhaseProtocolError(
                f"{scope.describe()} was opened on thread id {scope.thread_id}, "
                f"but the exit names thread id {thread_id}"
            )

    def _forget_dead_threads(self) -> None:
        """Bound the registry (lock held).

        Scopes of threads that ended can never be closed and are forgotten first; if the
        registry is still full, the oldest half is forgotten (those phases can still be
        closed through their handles, but no longer by scope id).
        """
        for scope_id, scope in list(self._open.items()):
            if not scope.thread.is_alive():
                del self._open[scope_id]
        if len(self._open) >= _MAX_TRACKED_SCOPES:
            for scope_id in list(self._open)[: _MAX_TRACKED_SCOPES // 2]:
                del self._open[scope_id]


def _has_ancestor(scope: OpenScope, ancestor: OpenScope) -> bool:
    node = scope.parent
    while node is not None:
        if node is ancestor:
            return True
        node = node.parent
    return False


__all__ = [
    "OOMExceptionClassification",
    "OOMFlightRecorder",
    "OOMFlightRecorderConfig",
    "OpenScope",
    "PhaseBoundary",
    "PhaseHandle",
    "PhaseProtocolError",
    "PhaseRecorder",
    "PhaseToken",
    "classify_oom_exception",
]
