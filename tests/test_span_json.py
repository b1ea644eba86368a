"""memspan's OTLP JSON span encoder writes exactly what the OpenTelemetry library writes.

The reference is ``encode_spans(spans).to_dict()`` of the library's JSON trace encoder: the
dicts must be equal and their ``json.dumps`` texts identical (same key order). Spans are
built directly as ``ReadableSpan`` objects carrying every attribute value type, events,
links, statuses, trace states, dropped counts and several resources and scopes (equal but
distinct ones too), then taken from a real ``memspan.Tracker``, then read back from the
embedded exporter's file.
"""

from __future__ import annotations

import enum
import json
import math
from collections import OrderedDict, namedtuple
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.json.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from conftest import make_telemetry
from memspan import MemspanConfig, Tracker
from memspan.drops import DropLedger
from memspan.export import span_json
from memspan.export.bounded_file import BoundedLineFile
from memspan.export.embedded import SpanLinesExporter, span_limits
from memspan.export.span_json import encode_spans_dict, json_line, try_encode_spans_dict
from memspan.sources.host import HostMemorySource

COMPACT = (",", ":")


def library(spans: list[ReadableSpan]) -> dict[str, Any]:
    return encode_spans(spans).to_dict()


def assert_identical(spans: list[ReadableSpan], *, fast: bool) -> None:
    """memspan's encoding equals the library's, as dicts and as JSON text; ``fast``: without
    falling back to the library."""
    expected = library(spans)
    if fast:
        direct = try_encode_spans_dict(spans)
        assert direct is not None, "the batch fell back to the library encoder"
        assert direct == expected
    ours = encode_spans_dict(spans)
    assert ours == expected
    assert json.dumps(ours, separators=COMPACT) == json.dumps(expected, separators=COMPACT)
    assert json.dumps(ours) == json.dumps(expected)
    line = json_line(ours)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == json.loads(json.dumps(expected, separators=COMPACT))


# -- generated spans --------------------------------------------------------------------------
texts = st.text(max_size=12)
keys = st.one_of(st.just(""), st.sampled_from(["a", "b", "memspan.phase.name"]), texts)
ints = st.one_of(st.integers(-(2**70), 2**70), st.sampled_from([0, 1, -1, 2**63, -(2**63) - 1]))
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e308, 5e-324]),
)
byte_values = st.binary(max_size=12)
scalars = st.one_of(texts, st.booleans(), ints, floats)
homogeneous = st.one_of(*(st.lists(s, max_size=4) for s in (texts, st.booleans(), ints, floats, byte_values)))
standard_values = st.recursive(
    st.one_of(st.none(), scalars, byte_values, homogeneous, homogeneous.map(tuple)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(keys, st.integers(-3, 3)), inner, max_size=3),
    ),
    max_leaves=8,
)


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    pass


class Ratio(float):
    pass


Pair = namedtuple("Pair", "left right")


class Opaque:
    pass


#: values the library takes and memspan either encodes by the library's rules (subclasses
#: of str, int, float) or hands back to the library (everything else)
odd_values = st.sampled_from(
    [
        Colour.RED,
        Name("n"),
        Name(""),
        Ratio(0.5),
        Ratio(math.nan),
        Pair(1, "x"),
        OrderedDict(a=1),
        bytearray(b"ab"),
        range(3),
        frozenset({1}),
        Opaque(),
        [Opaque()],
        {"k": Opaque()},
        b"\xff\x00",
        memoryview(b"x"),
        {1.5: "float key"},
        {(): "empty"},
    ]
)
odd_or_standard = st.one_of(standard_values, odd_values)


def attribute_maps(values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    plain = st.dictionaries(keys, values, max_size=6)
    bounded = st.builds(
        lambda limit, items: BoundedAttributes(limit, items),
        st.integers(0, 4),
        st.dictionaries(keys.filter(bool), values, max_size=6),
    )
    return st.one_of(st.none(), plain, bounded)


trace_state_keys = st.from_regex(r"[a-z][a-z0-9_\-*/]{0,6}", fullmatch=True)
trace_state_values = st.from_regex(r"[!-+\--<>-~]{1,8}", fullmatch=True)
trace_states = st.one_of(
    st.none(),
    st.lists(st.tuples(trace_state_keys, trace_state_values), max_size=3, unique_by=lambda kv: kv[0]).map(
        TraceState
    ),
)
span_contexts = st.builds(
    lambda trace_id, span_id, remote, flags, state: SpanContext(
        trace_id, span_id, remote, TraceFlags(flags), state
    ),
    st.one_of(st.integers(0, 2**128 - 1), st.sampled_from([0, 1, 2**128 - 1])),
    st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([0, 2**64 - 1])),
    st.booleans(),
    st.sampled_from([0, 1]),
    trace_states,
)
times = st.one_of(st.none(), st.just(0), st.integers(1, 2**64))
statuses = st.one_of(
    st.just(Status(StatusCode.UNSET)),
    st.just(Status(StatusCode.OK)),
    st.builds(Status, st.just(StatusCode.ERROR), st.one_of(st.none(), texts)),
)

#: several resources and scopes, with equal but distinct objects among them (the library
#: groups by equality, not identity)
RESOURCES = [
    Resource({"service.name": "a", "n": 1}),
    Resource({"service.name": "a", "n": 1}),  # equal to the first
    Resource({"service.name": "b", "tags": ("x", "y")}, "https://example.com/schema/1"),
    Resource({}),
    Resource({"n": 1, "service.name": "a"}),  # equal to the first, keys in another order
]
SCOPES = [
    None,
    InstrumentationScope("memspan", "0.1.0"),
    InstrumentationScope("memspan", "0.1.0"),  # equal to the previous one
    InstrumentationScope("other"),
    InstrumentationScope("", None, None, None),
    InstrumentationScope("attrs", "2", "https://example.com/scope", {"k": "v", "i": 2}),
]


@st.composite
def readable_spans(draw: st.DrawFn, values: st.SearchStrategy[Any]) -> ReadableSpan:
    attributes = attribute_maps(values)
    events = st.lists(
        st.builds(Event, texts, attributes, st.one_of(st.just(0), st.integers(1, 2**64))), max_size=3
    )
    links = st.lists(st.builds(Link, span_contexts, attributes), max_size=2)
    drawn_events = draw(events)
    drawn_links = draw(links)
    if draw(st.booleans()):
        drawn_events = BoundedList.from_seq(draw(st.integers(0, 3)), drawn_events)
    if draw(st.booleans()):
        drawn_links = BoundedList.from_seq(draw(st.integers(0, 3)), drawn_links)
    return ReadableSpan(
        name=draw(st.one_of(texts, st.just(""))),
        context=draw(st.one_of(st.none(), span_contexts)),
        parent=draw(st.one_of(st.none(), span_contexts)),
        resource=draw(st.sampled_from(RESOURCES)),
        attributes=draw(attributes),
        events=drawn_events,
        links=drawn_links,
        kind=draw(st.sampled_from(list(SpanKind))),
        status=draw(statuses),
        start_time=draw(times),
        end_time=draw(times),
        instrumentation_scope=draw(st.sampled_from(SCOPES)),
    )


PROPERTY = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@PROPERTY
@given(st.lists(readable_spans(standard_values), max_size=6))
def test_every_standard_batch_is_encoded_as_the_library_does_without_falling_back(
    spans: list[ReadableSpan],
) -> None:
    assert_identical(spans, fast=True)


@PROPERTY
@given(st.lists(readable_spans(odd_or_standard), max_size=6))
def test_odd_values_give_the_library_output_too(spans: list[ReadableSpan]) -> None:
    assert_identical(spans, fast=False)


def test_subclasses_of_str_int_and_float_are_encoded_without_falling_back() -> None:
    span = ReadableSpan(
        "s",
        SpanContext(1, 2, False),
        attributes={
            "colour": Colour.RED,
            "name": Name("n"),
            "empty": Name(""),
            "ratio": Ratio(0.5),
            "nan": Ratio(math.nan),
            "inf": Ratio(-math.inf),
            "nested": [Colour.RED, Name("x")],
        },
    )
    assert_identical([span], fast=True)


def test_a_value_the_library_cannot_encode_is_skipped_as_the_library_skips_it() -> None:
    span = ReadableSpan(
        "s", SpanContext(1, 2, False), attributes={"kept": 1, "opaque": Opaque(), "listed": [Opaque()]}
    )
    assert try_encode_spans_dict([span]) is None
    encoded = encode_spans_dict([span])
    assert encoded == library([span])
    attributes = encoded["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["attributes"]
    assert [a["key"] for a in attributes] == ["kept"]


@pytest.mark.parametrize(
    "context", [SpanContext(2**128, 1, False), SpanContext(1, -1, False), SpanContext(1, 2**64, False)]
)
def test_an_id_out_of_range_raises_what_the_library_raises(context: SpanContext) -> None:
    span = ReadableSpan("s", context)
    with pytest.raises(OverflowError):
        library([span])
    with pytest.raises(OverflowError):
        encode_spans_dict([span])


def test_an_unknown_span_kind_raises_what_the_library_raises() -> None:
    span = ReadableSpan("s", SpanContext(1, 2, False), kind="internal")  # type: ignore[arg-type]
    with pytest.raises(KeyError):
        library([span])
    with pytest.raises(KeyError):
        encode_spans_dict([span])


def test_the_probe_batch_agrees_with_the_installed_library() -> None:
    assert span_json.agrees_with_library()


def test_a_disagreeing_encoder_hands_every_batch_to_the_library(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    right = span_json._link
    monkeypatch.setattr(span_json, "_link", lambda link: {**right(link), "flags": 0})
    monkeypatch.setattr(span_json, "_agreement", None)
    span = ReadableSpan("s", SpanContext(1, 2, False), links=[Link(SpanContext(3, 4, True))])
    assert try_encode_spans_dict([span]) is None
    assert encode_spans_dict([span]) == library([span])
    assert "disagrees with the installed OpenTelemetry library" in caplog.text
    assert span_json._agreement is False


def test_no_spans_encode_to_an_empty_dict() -> None:
    assert encode_spans_dict([]) == library([]) == {}


def test_equal_resources_and_scopes_share_one_group_in_first_seen_order() -> None:
    spans = [
        ReadableSpan(
            f"s{i}",
            SpanContext(1, i + 1, False),
            resource=RESOURCES[i % 5],
            instrumentation_scope=SCOPES[i % 6],
        )
        for i in range(30)
    ]
    assert_identical(spans, fast=True)
    resource_spans = encode_spans_dict(spans)["resourceSpans"]
    assert len(resource_spans) == 3  # RESOURCES 0, 1 and 4 are equal


def test_the_caches_stay_bounded_and_give_right_answers_after_clearing() -> None:
    span_json.clear_caches()
    resource = Resource({"r": "x"})
    for batch in range(3):
        spans = [
            ReadableSpan(
                "s",
                SpanContext(1, 2, False),
                resource=resource,
                attributes={"unique": f"{batch}-{i}", "long": "x" * 1000},
            )
            for i in range(span_json.STRING_ENTRY_LIMIT // 2 + 1)
        ]
        assert_identical(spans, fast=True)
        assert len(span_json._string_entries) <= span_json.STRING_ENTRY_LIMIT
        assert all(len(value) <= span_json.STRING_ENTRY_MAX_CHARS for _, value in span_json._string_entries)
    for i in range(span_json.OBJECT_LIMIT * 2):
        scope = InstrumentationScope(f"scope{i}")
        assert_identical(
            [ReadableSpan("s", resource=Resource({"i": i}), instrumentation_scope=scope)], fast=True
        )
        assert len(span_json._resources) <= span_json.OBJECT_LIMIT
        assert len(span_json._scopes) <= span_json.OBJECT_LIMIT


# -- memspan's own phase spans ----------------------------------------------------------------
def run_phases(tracker: Any) -> None:
    with tracker.phase("outer", lr=0.1, tag="x", sizes=[1, 2, 3], ratio=float("nan")):
        trace.get_current_span().add_event("checkpoint", {"step": 1, "path": "/tmp/c"})
        for step in range(3):
            with tracker.phase("step", step=step, amp=True, dtype="bfloat16"):
                trace.get_current_span().set_attribute("late", (1.5, -0.0))
                with tracker.phase("forward", batch_size=64):
                    pass
        try:
            with tracker.phase("boom", attempt=1):
                raise ValueError("bad")
        except ValueError:
            pass


@pytest.mark.parametrize("mode", ["deferred", "sdk"])
@pytest.mark.parametrize("embedded_limits", [False, True])
def test_real_phase_spans_are_encoded_as_the_library_does(mode: str, embedded_limits: bool) -> None:
    if embedded_limits:  # the embedded default's limits: attributes are BoundedAttributes
        exporter = InMemorySpanExporter()
        provider = TracerProvider(span_limits=span_limits())
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracker = Tracker(
            tracer_provider=provider,
            sources=[HostMemorySource()],
            start_sampler=False,
            config=MemspanConfig(span_mode=mode),
        )
        finished = exporter.get_finished_spans
    else:
        telemetry = make_telemetry(config=MemspanConfig(span_mode=mode))
        tracker = telemetry.tracker
        finished = telemetry.spans.get_finished_spans
    try:
        run_phases(tracker)
        spans = list(finished())
    finally:
        tracker.shutdown()
    names = sorted(span.name for span in spans)
    assert names == sorted(["outer", "boom"] + ["step", "forward"] * 3)
    assert any(span.events for span in spans) and any(span.links for span in spans)
    assert any(span.status.status_code is StatusCode.ERROR for span in spans)
    assert_identical(spans, fast=True)
    for span in spans:
        assert_identical([span], fast=True)


# -- the embedded exporter's file -------------------------------------------------------------
def test_the_embedded_exporter_writes_the_library_encoding(tmp_path: Path) -> None:
    telemetry = make_telemetry()
    try:
        run_phases(telemetry.tracker)
        spans = list(telemetry.spans.get_finished_spans())
    finally:
        telemetry.tracker.shutdown()
    odd = ReadableSpan("odd", SpanContext(1, 2, False), attributes={"opaque": Opaque(), "i": 1})
    batches = [spans, spans[:1], [odd], [*spans[:2], odd]]
    ledger = DropLedger()
    stream = BoundedLineFile(str(tmp_path / "traces.jsonl"), max_bytes=1 << 20, ledger=ledger)
    exporter = SpanLinesExporter(stream, ledger)
    for batch in batches:
        exporter.export(batch)
    exporter.export([])
    stream.close()
    lines = (tmp_path / "traces.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        json.loads(json.dumps(library(batch))) for batch in batches
    ]
    # the same values as the library's text (orjson writes them; the bytes may differ)
    assert [json.loads(line) for line in lines] == [
        json.loads(json.dumps(library(batch), separators=COMPACT)) for batch in batches]


def test_json_lines_keep_every_value_orjson_cannot_write() -> None:
    """Non-ASCII text is written as UTF-8 and reads back the same; a dict orjson refuses (an
    int beyond 64 bits, which the library writes) is written by ``json.dumps`` instead."""
    text = {"name": "étape · 步", "n": 1}
    assert json.loads(json_line(text)) == text
    huge = {"value": 1 << 70}
    assert json_line(huge) == b'{"value":1180591620717411303424}\n'
    assert json.loads(json_line(huge)) == huge
