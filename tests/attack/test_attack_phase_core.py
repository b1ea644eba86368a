"""Attack tests for the phase core (each failed on main when written; see the report)."""

from __future__ import annotations

import logging
import tracemalloc
from collections import Counter

from opentelemetry import trace

from conftest import make_telemetry
from memspan.config import MemspanConfig


def test_step_root_exported_once_when_its_step_overflows_in_the_roots_batch(
        monkeypatch) -> None:
    """A step with more phases than ``max_step_phases``, drained in the same batch as its root,
    is released as ``overflow`` (root included, since it has ended) and then the root is routed
    again from the batch: the root span is exported twice (and counted twice in histograms)."""
    monkeypatch.setenv("MEMSPAN_STEP_KEEP_EVERY", "10")
    t = make_telemetry(config=MemspanConfig.from_env())
    try:
        t.tracker.exporter.max_step_phases = 4
        with t.tracker.phase("step"):
            for _ in range(6):
                with t.tracker.phase("inner"):
                    pass
        spans = t.finished()
        ids = Counter(s.context.span_id for s in spans)
        assert all(n == 1 for n in ids.values()), Counter(s.name for s in spans)
    finally:
        t.tracker.shutdown()


def test_events_attributes_links_on_current_phase_span_are_bounded() -> None:
    """``trace.get_current_span().add_event`` (or set_attribute/add_link) inside a long phase
    grows the PhaseSpan without bound on the caller's thread; the SDK's span keeps at most the
    span limits (128 each by default). Memory must stay bounded."""
    logging.getLogger("opentelemetry.attributes").setLevel(logging.CRITICAL)
    t = make_telemetry()
    try:
        tracemalloc.start()
        try:
            with t.tracker.phase("train"):
                span = trace.get_current_span()
                base = tracemalloc.get_traced_memory()[0]
                for i in range(50_000):
                    span.add_event("tick", {"i": i})
                    span.set_attribute(f"k{i}", i)
                    span.add_link(trace.SpanContext(1, i + 1, False))
                grown = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        assert grown < 8 << 20, f"{grown / 1e6:.1f} MB held by one phase span"
    finally:
        t.tracker.shutdown()


def test_phase_inherited_by_a_forked_child_is_not_exported_again_by_the_child() -> None:
    """A phase open in the parent at ``os.fork()`` and closed in the child (the child leaves the
    with-block, e.g. by returning or through ``sys.exit``) is exported by the child with the
    parent's span id; the parent exports it too: two spans with one span id."""
    import os

    t = make_telemetry()
    tracker = t.tracker
    read_end, write_end = os.pipe()
    with tracker.phase("outer"):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            os.close(read_end)
    if pid == 0:  # pragma: no cover - child
        try:
            names = [s.name for s in t.finished()]
            os.write(write_end, ",".join(names).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        child_exported = pipe.read().split(",")
    try:
        assert t.span("outer")
        assert "outer" not in child_exported, "the child exported the parent's phase again"
    finally:
        tracker.shutdown()


def test_sdk_span_path_keeps_figures_when_user_code_ends_the_current_span(monkeypatch) -> None:
    """On the ``sdk`` span path (any processor with on_start work, a non-SDK or proxy
    provider, or MEMSPAN_SPAN_MODE=sdk) ``trace.get_current_span()`` is the real SDK span, so
    ``with span:`` / ``span.end()`` inside a phase ends it early: the exported phase span has
    none of its exit figures (rss.end, peak, retained). On the deferred path the same calls are
    ignored and the figures are there."""
    monkeypatch.setenv("MEMSPAN_SPAN_MODE", "sdk")
    t = make_telemetry(config=MemspanConfig.from_env())
    try:
        with t.tracker.phase("a"), trace.get_current_span():
            pass
        with t.tracker.phase("b"):
            trace.get_current_span().end()
        for name in ("a", "b"):
            attributes = t.span(name).attributes
            assert "memspan.memory.rss.end" in attributes, (name, dict(attributes))
    finally:
        t.tracker.shutdown()


def test_phase_open_at_tracker_shutdown_is_exported_or_counted() -> None:
    """A phase still open when its tracker shuts down (``memspan.shutdown()`` inside the
    outermost phase, or ``configure()`` replacing the tracker) ends later into a buffer no
    worker drains: it is neither exported nor counted in the drop ledger, against 'every drop
    is counted'. The same holds for every phase opened after shutdown."""
    from memspan.drops import DropLedger

    ledger = DropLedger()
    t = make_telemetry(ledger=ledger)
    with t.tracker.phase("train"):
        with t.tracker.phase("step"):
            pass
        t.tracker.shutdown()
    exported = [s.name for s in t.spans.get_finished_spans()]
    counted = sum(ledger.snapshot().values())
    assert "train" in exported or counted >= 1, (exported, ledger.snapshot())


def test_step_sampling_on_the_sdk_span_path_keeps_every_step_and_says_so(
        monkeypatch, caplog) -> None:  # type: ignore[no-untyped-def]
    """On the ``sdk`` span path (here: a processor that works in ``on_start``) phases are SDK
    spans that have started, so they must end: step sampling cannot drop them. Every step is
    exported (keep reason ``all``) and one warning says why (documented in
    docs/observability.md), instead of the setting being ignored silently."""
    from opentelemetry.sdk.trace import SpanProcessor

    class Enricher(SpanProcessor):  # a processor that works in on_start, as many do
        def on_start(self, span, parent_context=None):  # type: ignore[no-untyped-def]
            span.set_attribute("enriched", True)

    monkeypatch.setenv("MEMSPAN_STEP_KEEP_EVERY", "10")
    monkeypatch.setenv("MEMSPAN_STEP_KEEP_FIRST", "0")
    t = make_telemetry(config=MemspanConfig.from_env())
    try:
        t.tracer_provider.add_span_processor(Enricher())
        t.tracker.span_paths.recheck()
        assert t.tracker.span_path.mode == "sdk"
        for _ in range(30):
            with t.tracker.phase("step"):
                pass
        steps = [s for s in t.finished() if s.name == "step"]
        reasons = Counter(s.attributes.get("memspan.step.keep_reason") for s in steps)
        assert len(steps) == 30 and reasons == {"all": 30}, reasons
        assert "step sampling needs phase spans built by memspan" in caplog.text
    finally:
        t.tracker.shutdown()


def test_exception_event_of_an_escaping_exception_says_escaped() -> None:
    """The ``exception`` event memspan records for an exception escaping a phase carries
    ``exception.escaped = "False"``; the SDK's span records ``"True"`` in that case."""
    t = make_telemetry()
    try:
        try:
            with t.tracker.phase("p"):
                raise ValueError("v")
        except ValueError:
            pass
        (event,) = t.span("p").events
        assert event.attributes["exception.escaped"] == "True"
    finally:
        t.tracker.shutdown()
