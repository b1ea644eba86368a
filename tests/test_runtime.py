"""The Stormlog-compatible phase runtime API and its protocol errors."""

from __future__ import annotations

import threading

import pytest

from memspan import PhaseBoundary, PhaseHandle, PhaseProtocolError, PhaseRecorder, PhaseToken
from memspan.runtime import MAX_DEPTH


def test_enter_and_exit_return_tokens_and_boundaries() -> None:
    recorder = PhaseRecorder()
    token, start = recorder.enter(session_id="s1", rank=0, name="train", attrs={"lr": 0.1})
    inner_token, inner_start = recorder.enter(session_id="s1", rank=0, name="step")
    assert isinstance(token, PhaseToken)
    assert token.scope_id == "s1:1" and inner_token.scope_id == "s1:2"
    assert token.thread_id == threading.get_ident()
    assert isinstance(start, PhaseBoundary)
    assert start.event_type == "phase_start"
    assert start.metadata["attrs"] == {"lr": 0.1}
    assert inner_start.path == ("train", "step")
    assert inner_start.context == "train / step"
    assert inner_start.metadata["parent_scope_id"] == "s1:1"
    end = recorder.exit(inner_token)
    assert end.event_type == "phase_end" and end.scope_id == "s1:2"
    assert recorder.exit(token).path == ("train",)


def test_enter_phase_and_exit_phase_by_scope_id() -> None:
    recorder = PhaseRecorder()
    outer = recorder.enter_phase(session_id="s", rank=1, name="eval")
    boundary = recorder.enter_phase(session_id="s", rank=1, name="batch", metadata={"k": 1})
    assert boundary.event_type == "phase_start" and boundary.metadata["attrs"] == {"k": 1}
    current = recorder.current()
    assert current is not None and current.scope_id == boundary.scope_id
    closed = recorder.exit_phase(session_id="s", rank=1, scope_id=boundary.scope_id,
                                 thread_id=threading.get_ident())
    assert closed.event_type == "phase_end" and closed.scope_id == boundary.scope_id
    # the phase is really closed: the enclosing phase is current again, a new phase nests
    # under it (not under the closed one), and closing it twice is a protocol error
    current = recorder.current()
    assert current is not None and current.scope_id == outer.scope_id
    sibling = recorder.enter_phase(session_id="s", rank=1, name="batch")
    assert sibling.path == ("eval", "batch")
    assert sibling.metadata["parent_scope_id"] == outer.scope_id
    with pytest.raises(PhaseProtocolError, match=r"already closed"):
        recorder.exit_phase(session_id="s", rank=1, scope_id=boundary.scope_id,
                            thread_id=threading.get_ident())


def test_exit_twice_is_a_protocol_error() -> None:
    recorder = PhaseRecorder()
    token, _ = recorder.enter(session_id="s", rank=0, name="a")
    recorder.exit(token)
    with pytest.raises(PhaseProtocolError, match=r"scope s:1 is already closed"):
        recorder.exit(token)


def test_unknown_scope_is_a_protocol_error() -> None:
    recorder = PhaseRecorder()
    with pytest.raises(PhaseProtocolError, match=r"unknown scope 's:99' for session 's'"):
        recorder.exit(PhaseToken("s:99", "s", 0, threading.get_ident(), "x"))


def test_out_of_order_exit_names_the_open_inner_phase() -> None:
    recorder = PhaseRecorder()
    outer, _ = recorder.enter(session_id="s", rank=0, name="outer")
    recorder.enter(session_id="s", rank=0, name="inner")
    with pytest.raises(PhaseProtocolError, match=r"closed out of order.*'outer / inner'"):
        recorder.exit(outer)


def test_exit_phase_naming_another_thread_or_rank_is_an_error() -> None:
    recorder = PhaseRecorder()
    boundary = recorder.enter_phase(session_id="s", rank=0, name="a")
    with pytest.raises(PhaseProtocolError, match=r"exit names thread id 1"):
        recorder.exit_phase(session_id="s", rank=0, scope_id=boundary.scope_id, thread_id=1)
    with pytest.raises(PhaseProtocolError, match=r"opened by rank 0, not rank 3"):
        recorder.exit_phase(session_id="s", rank=3, scope_id=boundary.scope_id,
                            thread_id=threading.get_ident())


def test_exit_from_another_thread_is_an_error() -> None:
    recorder = PhaseRecorder()
    token, _ = recorder.enter(session_id="s", rank=0, name="a")
    errors: list[Exception] = []

    def run() -> None:
        try:
            recorder.exit(PhaseToken(token.scope_id, "s", 0, threading.get_ident(), "a"))
        except PhaseProtocolError as error:
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert errors and "exit names thread id" in str(errors[0])
    recorder.exit(token)


def test_reset_drops_open_scopes() -> None:
    recorder = PhaseRecorder()
    token, _ = recorder.enter(session_id="s", rank=0, name="a")
    recorder.reset()
    with pytest.raises(PhaseProtocolError, match=r"already closed"):
        recorder.exit(token)
    _, boundary = recorder.enter(session_id="s", rank=0, name="b")
    assert boundary.path == ("b",)  # the dropped scope is nobody's parent
    assert boundary.scope_id == "s:2"  # ids are never reused


def test_nesting_depth_is_bounded() -> None:
    recorder = PhaseRecorder()
    for _ in range(MAX_DEPTH):
        recorder.enter(session_id="s", rank=0, name="x")
    with pytest.raises(PhaseProtocolError, match=r"are phases left unclosed"):
        recorder.enter(session_id="s", rank=0, name="one-too-many")


def test_phase_handle_calls_back_once() -> None:
    calls: list[str] = []
    handle = PhaseHandle(scope_id="s:1", name="a", path=("a",),
                         close_callback=lambda: calls.append("closed") or "result")
    assert handle.close() == "result"
    assert handle.close() is None
    assert calls == ["closed"] and handle.closed and handle.phase_path == "a"
