"""A phase opened in a signal handler that interrupted its own thread inside a phase, on every
span path: it must neither deadlock nor lose the interrupted phase (a real SIGALRM, delivered
while the thread is inside memspan's ring and max-history locks)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from memspan.drops import SIGNAL_REENTRY
from memspan.oom.ring import EventRing
from memspan.reentry import ReentryGuard
from memspan.sampling.history import MaxHistory


def test_the_holder_reentering_is_told_at_once_and_other_threads_wait() -> None:
    import threading

    guard = ReentryGuard()
    assert guard.enter()
    assert not guard.enter()  # the same thread, again: refused at once, nothing held
    entered: list[bool] = []
    other = threading.Thread(target=lambda: entered.append(guard.enter()))
    other.start()
    other.join(0.2)
    assert other.is_alive()  # another thread waits
    guard.exit()
    other.join(5)
    assert entered == [True]


def test_a_ring_record_from_a_handler_inside_the_ring_is_counted_not_deadlocked() -> None:
    ring = EventRing(capacity=64)
    fired: list[int] = []

    def handler(signum: int, frame: object) -> None:
        ring.record({"type": "user", "from": "handler"})
        fired.append(len(ring.snapshot()))

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        assert ring._lock.enter()  # the main thread is inside the ring when the signal lands
        try:
            signal.setitimer(signal.ITIMER_REAL, 0.01)
            while not fired:
                pass  # the handler runs here, on this thread, between bytecodes
        finally:
            ring._lock.exit()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert fired == [0]
    assert ring.ledger.count(SIGNAL_REENTRY) == 1
    ring.record({"type": "user"})  # the ring works normally afterwards
    assert len(ring.snapshot()) == 1


def test_max_history_answers_unknown_when_reentered() -> None:
    history = MaxHistory()
    history.record(5)
    assert history._lock.enter()
    try:
        assert history.max_since(0) is None
    finally:
        history._lock.exit()
    assert history.max_since(0) == 5


@pytest.mark.parametrize("mode", ["deferred", "sync", "sdk"])
def test_a_phase_in_a_signal_handler_inside_a_phase_neither_deadlocks_nor_loses_phases(
        mode: str) -> None:
    # The SDK's own exporters take plain locks (a signal handler ending any span inside one
    # waits for itself, memspan or not): the spans land in lists, which need no lock.
    script = textwrap.dedent(f"""
        import signal, sys
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
        from opentelemetry.sdk.trace.export import (BatchSpanProcessor, SpanExporter,
                                                    SpanExportResult)
        from memspan import MemspanConfig, Tracker

        ended = []

        class ListExporter(SpanExporter):
            def export(self, spans):
                ended.extend(spans)
                return SpanExportResult.SUCCESS

        class ListProcessor(SpanProcessor):
            def on_end(self, span):
                ended.append(span)

        provider = TracerProvider()
        mode = {mode!r}
        provider.add_span_processor(BatchSpanProcessor(ListExporter(), max_queue_size=1 << 16)
                                    if mode == "deferred"
                                    else ListProcessor())
        tracker = Tracker(tracer_provider=provider,
                          meter_provider=MeterProvider(metric_readers=[InMemoryMetricReader()]),
                          config=MemspanConfig(span_mode=mode, sample_interval_s=0.001))
        assert tracker.span_path.mode == mode, tracker.span_path.reason
        handled = []

        def handler(signum, frame):
            with tracker.phase("in-handler"):
                handled.append(1)

        signal.signal(signal.SIGALRM, handler)
        signal.setitimer(signal.ITIMER_REAL, 0.002, 0.002)  # lands anywhere, often in memspan
        for index in range(3000):
            with tracker.phase("outer"):
                with tracker.phase("inner"):
                    pass
        signal.setitimer(signal.ITIMER_REAL, 0)
        tracker.flush()
        provider.force_flush()
        names = [s.name for s in ended]
        assert names.count("outer") == 3000 and names.count("inner") == 3000, names[:5]
        assert names.count("in-handler") == len(handled) > 0
        tracker.shutdown()
        print("ok", len(handled))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok ")
