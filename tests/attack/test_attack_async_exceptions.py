"""Exceptions delivered asynchronously (signal handlers run between any two bytecodes).

A trace function that raises on a chosen event stands in for a signal handler raising at that
point, deterministically: Python delivers a signal handler's exception exactly so.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

from conftest import make_telemetry


def _raise_at(function: str, module_part: str, error: BaseException
              ) -> Callable[[FrameType, str, Any], Any]:
    fired = []

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if (not fired and frame.f_code.co_name == function
                and module_part in frame.f_code.co_filename):
            if event == "return":
                fired.append(True)
                raise error
            return tracer
        return tracer if event == "call" and frame.f_code.co_name == function else None

    return tracer


def test_interrupt_right_after_the_phase_is_made_current_does_not_leak_it() -> None:
    """Ctrl-C (KeyboardInterrupt) arriving just after ``PhaseCore._enter`` attached the phase's
    context, before ``PhaseScope`` stored it: ``__exit__`` never runs, the phase stays current
    forever, and every later phase of the thread (a Jupyter kernel survives Ctrl-C) nests under
    a phantom ``outer`` that is never exported."""
    t = make_telemetry()
    try:
        sys.settrace(_raise_at("_enter", "phases/core", KeyboardInterrupt()))
        try:
            with pytest.raises(KeyboardInterrupt), t.tracker.phase("outer"):
                pass
        finally:
            sys.settrace(None)
        assert t.tracker.current_phase() is None, t.tracker.current_phase()
    finally:
        t.tracker.shutdown()


class StepTimeout(TimeoutError):
    pass


def _step_timeout_handler(signum: int, frame: Any) -> None:
    """A user's ``signal.alarm`` handler (registered for SIGALRM below): it raises."""
    raise StepTimeout("step took too long")


def _phase_under(tracer: Any, t: Any) -> None:
    """One phase with ``tracer`` installed; the step timeout must reach this code."""
    sys.settrace(tracer)
    try:
        with pytest.raises(StepTimeout), t.tracker.phase("step"):
            pass
    finally:
        sys.settrace(None)


@pytest.fixture
def alarm_handler() -> Any:
    previous = signal.signal(signal.SIGALRM, _step_timeout_handler)
    yield
    signal.signal(signal.SIGALRM, previous)


def test_signal_handler_exception_during_exit_figures_reaches_the_user(alarm_handler: Any) -> None:
    """A ``signal.alarm`` step timeout (a handler raising ``TimeoutError``) that fires while
    memspan reads a phase's exit figures is swallowed as a ``callback_error``: the user's
    timeout never reaches their code. (The handler runs as its own frame, as a real one does.)"""
    t = make_telemetry()
    reads: list[bool] = []

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_name == "rss_and_peak" and event == "return":
            reads.append(True)
            if len(reads) == 2:  # the exit reading (the first is the entry's): SIGALRM fires
                _step_timeout_handler(signal.SIGALRM, frame)
        return tracer

    try:
        _phase_under(tracer, t)
        assert t.tracker.current_phase() is None  # the phase still ended, and was exported
        assert [s.name for s in t.finished()] == ["step"]
    finally:
        t.tracker.shutdown()


def test_signal_handler_exception_while_a_phase_opens_reaches_the_user(alarm_handler: Any) -> None:
    """The same timeout arriving while memspan reads a phase's entry figures."""
    t = make_telemetry()
    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_name == "rss_and_peak" and event == "return":
            sys.settrace(None)
            _step_timeout_handler(signal.SIGALRM, frame)  # SIGALRM fires during the read
        return tracer

    try:
        _phase_under(tracer, t)
        assert t.tracker.current_phase() is None
    finally:
        t.tracker.shutdown()
