"""OTLP JSON of a batch of finished spans, built directly as dicts and lists.

The OpenTelemetry JSON exporter encodes a batch in two passes (generated message objects,
then their ``to_dict``), and hashes the batch's resource (a sorted JSON dump of its
attributes) once per span to group spans by it. :func:`encode_spans_dict` writes the same
dict in one pass and remembers what repeats across batches: the encoded resources and
instrumentation scopes (per object, holding a reference so an id is never reused), and the
``{"key": ..., "value": {"stringValue": ...}}`` entries of repeated string attributes (a
bounded dict, cleared when full).

Invariant: ``encode_spans_dict(spans) == encode_spans(spans).to_dict()`` (the library's
``opentelemetry.exporter.otlp.json.common.trace_encoder``), with the same key order, so the
``json.dumps`` text is identical too. The rules followed are the library's: a field is
omitted when it is falsy (an empty string, zero, an empty list), a message field is present
whenever the library builds the message (``resource``, ``scope``, an attribute's ``value``,
and ``status`` even when they encode to ``{}``), 64-bit integers are strings (``str(v)``),
ids are lowercase hex of their fixed width, bytes are base64, NaN and the infinities are
strings, ``flags`` says whether the parent (or a link's context) is remote, spans are grouped
by resource and then by scope (by equality, in first-seen order), and a link's trace state is
not written.

Fallback rule: a batch holding anything this module does not encode exactly as the library
does (a value type other than None, bool, str, int, float, bytes, list, tuple, dict and the
subclasses of str, int and float; an id out of range or not an int; an unknown span kind or
status code; any error while encoding) is encoded by the library itself, as a whole batch,
so the output (the library logging and skipping an attribute it cannot encode, or raising)
is always the library's. And should an OpenTelemetry release change those rules, a probe
batch encoded both ways at the first batch (:func:`agrees_with_library`) finds it: every
batch then goes to the library.

The result shares dicts with the caches and with other results: read it (``json.dumps``),
never change it. Resources and scopes are taken as immutable, as the SDK makes them.

:func:`json_line` writes such a dict as one line of JSON text, with ``orjson`` (about 15x
faster than ``json.dumps`` on these batches) and with ``json.dumps`` where orjson refuses a
value or is not installed. The two texts parse to the same value (orjson writes non-ASCII
characters as UTF-8 where ``json.dumps`` escapes them; the OTLP JSON readers decode both).
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.json.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import DEFAULT_TRACE_STATE, TraceState

try:  # BoundedAttributes moved between SDK releases (as in memspan.phases.span_build)
    from opentelemetry.attributes import BoundedAttributes
except ImportError:  # pragma: no cover
    from opentelemetry.sdk.util import BoundedAttributes  # type: ignore[attr-defined,no-redef]

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; json.dumps still works
    _orjson = None  # type: ignore[assignment]

_logger = logging.getLogger(__name__)

JsonDict = dict[str, Any]


def json_line(encoded: Mapping[str, Any]) -> bytes:
    """``encoded`` as one line of compact JSON, newline included (see the module docstring)."""
    if _orjson is not None:
        try:
            return _orjson.dumps(encoded, option=_orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # orjson.JSONEncodeError: e.g. an int beyond 64 bits
            pass
    return (json.dumps(encoded, separators=(",", ":")) + "\n").encode("utf-8")

#: the library's span kind numbers (``Span.SpanKind``: the SDK's value plus one)
_KINDS: dict[SpanKind, int] = {
    SpanKind.INTERNAL: 1,
    SpanKind.SERVER: 2,
    SpanKind.CLIENT: 3,
    SpanKind.PRODUCER: 4,
    SpanKind.CONSUMER: 5,
}
#: ``SpanFlags``: the context has an is-remote bit, and it is set
_HAS_IS_REMOTE = 0x100
_IS_REMOTE = 0x100 | 0x200
_TRACE_ID_END = 1 << 128
_SPAN_ID_END = 1 << 64

#: encoded entries of (key, string value) attributes; cleared when it holds this many
STRING_ENTRY_LIMIT = 4096
#: longer string values are encoded each time, not remembered
STRING_ENTRY_MAX_CHARS = 256
#: encoded resources and scopes remembered (per object); cleared when it holds this many
OBJECT_LIMIT = 64

_string_entries: dict[tuple[str, str], JsonDict] = {}
_resources: dict[int, tuple[Resource, JsonDict]] = {}
_scopes: dict[int, tuple[InstrumentationScope, JsonDict]] = {}


class _Unsupported(Exception):
    """A value this module does not encode exactly as the library does."""


def encode_spans_dict(spans: Sequence[ReadableSpan]) -> dict[str, Any]:
    """The OTLP JSON dict of ``spans``, equal to ``encode_spans(spans).to_dict()``.

    ``{}`` for no spans (the library's request without resource spans)."""
    encoded = try_encode_spans_dict(spans)
    if encoded is None:
        return encode_spans(spans).to_dict()
    return encoded


def try_encode_spans_dict(spans: Sequence[ReadableSpan]) -> dict[str, Any] | None:
    """What :func:`encode_spans_dict` returns, or None where the library must encode the
    batch (the fallback rule in the module docstring, and always where
    :func:`agrees_with_library` is False)."""
    if not (_agreement if _agreement is not None else agrees_with_library()):
        return None
    try:
        return _encode(spans)
    except Exception:  # any surprise: the library encodes the batch
        return None


_agreement: bool | None = None


def agrees_with_library() -> bool:
    """Whether this module encodes a probe batch (every field and value type the fast path
    takes) exactly as the installed library does; checked once, at the first batch. False
    (an OpenTelemetry release that changed its JSON encoding): every batch goes to the
    library, and a warning says so once."""
    global _agreement
    try:
        probe = _probe_spans()
        expected = encode_spans(probe).to_dict()
        encoded = _encode(probe)
        agreed = encoded == expected and repr(encoded) == repr(expected)
    except Exception:
        agreed = False
    if not agreed:
        _logger.warning(
            "memspan's OTLP JSON span encoder disagrees with the installed OpenTelemetry "
            "library on a probe batch; spans are encoded by the library (slower)"
        )
    _agreement = agreed
    return agreed


def _probe_spans() -> list[ReadableSpan]:
    values: dict[str, Any] = {
        "str": "text",
        "empty": "",
        "bool": True,
        "int": -(2**63),
        "big": 2**70,
        "float": 0.5,
        "negative zero": -0.0,
        "nan": math.nan,
        "inf": math.inf,
        "-inf": -math.inf,
        "bytes": b"\x00\xff",
        "no bytes": b"",
        "none": None,
        "strs": ("a", "b"),
        "ints": [1, 2],
        "floats": (1.5, math.nan),
        "bools": [False],
        "nothing": (),
        "nested": [[1], {"k": "v", 2: None}],
        "map": {},
        "": "no key",
    }
    remote = SpanContext(0xABC, 0xDEF, True, trace_state=TraceState([("k", "v"), ("a", "b")]))
    local = SpanContext(1, 2, False)
    resources = [Resource({"probe.name": "probe", "n": 1}, "https://probe/resource"), Resource({})]
    scopes = [InstrumentationScope("probe", "1.0", "https://probe/scope", {"s": "v"}), None]
    spans = []
    for index, kind in enumerate(SpanKind):
        spans.append(
            ReadableSpan(
                name="probe" if index else "",
                context=remote if index % 2 else local,
                parent=(None, remote, local)[index % 3],
                resource=resources[index % 2],
                attributes=BoundedAttributes(0, {"dropped": 1}) if index == 1 else values,
                events=BoundedList.from_seq(
                    2, [Event("gone", None, 1), Event("e", {"i": 1}, 5), Event("", None, 0)]
                ),
                links=[Link(remote, {"l": "v"}), Link(local, BoundedAttributes(0, {"x": 1}))],
                kind=kind,
                status=(Status(StatusCode.UNSET), Status(StatusCode.OK), Status(StatusCode.ERROR, "why"))[
                    index % 3
                ],
                start_time=index * 10 or None,
                end_time=index * 10 + 1,
                instrumentation_scope=scopes[index // 2 % 2],
            )
        )
    return spans


def clear_caches() -> None:
    """Forget every remembered encoding (tests; nothing else needs it)."""
    _string_entries.clear()
    _resources.clear()
    _scopes.clear()


# -- grouping ---------------------------------------------------------------------------------
def _encode(spans: Sequence[ReadableSpan]) -> JsonDict:
    # resource -> scope (or None) -> encoded spans; dicts keyed by the objects themselves so
    # equal resources and scopes group together exactly as in the library's defaultdicts, with
    # an identity shortcut so a resource is hashed once per batch, not once per span
    groups: dict[Resource, dict[InstrumentationScope | None, list[JsonDict]]] = {}
    by_id: dict[int, tuple[Resource, dict[InstrumentationScope | None, list[JsonDict]]]] = {}
    last_resource: object = _encode
    last_scope: object = _encode
    last_spans: list[JsonDict] = []
    for span in spans:
        resource = span.resource
        scope = span.instrumentation_scope or None
        if resource is not last_resource or scope is not last_scope:
            known = by_id.get(id(resource))
            if known is not None and known[0] is resource:
                scopes = known[1]
            else:
                scopes = groups.setdefault(resource, {})
                by_id[id(resource)] = (resource, scopes)
            last_spans = scopes.setdefault(scope, [])
            last_resource, last_scope = resource, scope
        last_spans.append(_span(span))
    if not groups:
        return {}
    resource_spans = []
    for resource, scopes in groups.items():
        scope_spans = []
        for scope, encoded_spans in scopes.items():
            entry: JsonDict = {"scope": _scope(scope), "spans": encoded_spans}
            if scope is not None and scope.schema_url:
                entry["schemaUrl"] = scope.schema_url
            scope_spans.append(entry)
        entry = {"resource": _resource(resource), "scopeSpans": scope_spans}
        if resource.schema_url:
            entry["schemaUrl"] = resource.schema_url
        resource_spans.append(entry)
    return {"resourceSpans": resource_spans}


def _resource(resource: Resource) -> JsonDict:
    known = _resources.get(id(resource))
    if known is not None and known[0] is resource:
        return known[1]
    encoded: JsonDict = {}
    attributes = _attributes(resource.attributes)
    if attributes:
        encoded["attributes"] = attributes
    if len(_resources) >= OBJECT_LIMIT:
        _resources.clear()
    _resources[id(resource)] = (resource, encoded)
    return encoded


def _scope(scope: InstrumentationScope | None) -> JsonDict:
    if scope is None:
        return {}
    known = _scopes.get(id(scope))
    if known is not None and known[0] is scope:
        return known[1]
    encoded: JsonDict = {}
    if scope.name:
        encoded["name"] = scope.name
    if scope.version:
        encoded["version"] = scope.version
    attributes = _attributes(scope.attributes)
    if attributes:
        encoded["attributes"] = attributes
    if len(_scopes) >= OBJECT_LIMIT:
        _scopes.clear()
    _scopes[id(scope)] = (scope, encoded)
    return encoded


# -- spans ------------------------------------------------------------------------------------
def _span(span: ReadableSpan) -> JsonDict:
    context = span.get_span_context()
    if context:
        trace_id, span_id, trace_state = context.trace_id, context.span_id, context.trace_state
    else:
        trace_id, span_id, trace_state = 0, 0, None
    encoded: JsonDict = {"traceId": _trace_id(trace_id), "spanId": _span_id(span_id)}
    if trace_state is not None and trace_state is not DEFAULT_TRACE_STATE:
        text = ",".join([f"{key}={value}" for key, value in trace_state.items()])
        if text:
            encoded["traceState"] = text
    parent = span.parent
    if parent:
        encoded["parentSpanId"] = _span_id(parent.span_id)
        encoded["flags"] = _IS_REMOTE if parent.is_remote else _HAS_IS_REMOTE
    else:
        encoded["flags"] = _HAS_IS_REMOTE
    name = span.name
    if name:
        encoded["name"] = name
    kind = span.kind
    encoded["kind"] = 1 if kind is SpanKind.INTERNAL else _KINDS[kind]
    start = span.start_time
    if start:
        encoded["startTimeUnixNano"] = str(start)
    end = span.end_time
    if end:
        encoded["endTimeUnixNano"] = str(end)
    attributes = _attributes(span.attributes)
    if attributes:
        encoded["attributes"] = attributes
    dropped = span.dropped_attributes
    if dropped:
        encoded["droppedAttributesCount"] = dropped
    events = [_event(event) for event in span.events]
    if events:
        encoded["events"] = events
    dropped = span.dropped_events
    if dropped:
        encoded["droppedEventsCount"] = dropped
    links = [_link(link) for link in span.links]
    if links:
        encoded["links"] = links
    dropped = span.dropped_links
    if dropped:
        encoded["droppedLinksCount"] = dropped
    status = span.status
    if status is not None:
        encoded["status"] = _status(status)
    return encoded


def _trace_id(value: object) -> str:
    if type(value) is not int or not 0 <= value < _TRACE_ID_END:
        raise _Unsupported("trace id")
    return f"{value:032x}"


def _span_id(value: object) -> str:
    if type(value) is not int or not 0 <= value < _SPAN_ID_END:
        raise _Unsupported("span id")
    return f"{value:016x}"


def _event(event: Any) -> JsonDict:
    encoded: JsonDict = {}
    timestamp = event.timestamp
    if timestamp:
        encoded["timeUnixNano"] = str(timestamp)
    name = event.name
    if name:
        encoded["name"] = name
    attributes = _attributes(event.attributes)
    if attributes:
        encoded["attributes"] = attributes
    dropped = event.dropped_attributes
    if dropped:
        encoded["droppedAttributesCount"] = dropped
    return encoded


def _link(link: Any) -> JsonDict:
    context = link.context
    encoded: JsonDict = {"traceId": _trace_id(context.trace_id), "spanId": _span_id(context.span_id)}
    attributes = _attributes(link.attributes)
    if attributes:
        encoded["attributes"] = attributes
    dropped = link.dropped_attributes
    if dropped:
        encoded["droppedAttributesCount"] = dropped
    encoded["flags"] = _IS_REMOTE if context and context.is_remote else _HAS_IS_REMOTE
    return encoded


def _status(status: Any) -> JsonDict:
    encoded: JsonDict = {}
    message = status.description
    if message:
        encoded["message"] = message
    code = status.status_code.value
    if type(code) is not int or code not in (0, 1, 2):
        raise _Unsupported("status code")
    if code:
        encoded["code"] = code
    return encoded


# -- attributes and values --------------------------------------------------------------------
def _attributes(attributes: Mapping[Any, Any] | None) -> list[JsonDict]:
    if not attributes:
        return []
    entries = _string_entries
    encoded = []
    for key, value in attributes.items():
        if type(value) is str and type(key) is str:
            entry = entries.get((key, value))
            if entry is None:
                entry = (
                    {"key": key, "value": {"stringValue": value}}
                    if key
                    else {"value": {"stringValue": value}}
                )
                if len(value) <= STRING_ENTRY_MAX_CHARS:
                    if len(entries) >= STRING_ENTRY_LIMIT:
                        entries.clear()
                    entries[(key, value)] = entry
            encoded.append(entry)
        elif key:
            encoded.append({"key": key, "value": _value(value)})
        else:
            encoded.append({"value": _value(value)})
    return encoded


def _value(value: Any) -> JsonDict:
    kind = type(value)
    if kind is str:
        return {"stringValue": value}
    if kind is bool:
        return {"boolValue": value}
    if kind is int:
        return {"intValue": str(value)}
    if kind is float:
        if value - value == 0.0:  # finite
            return {"doubleValue": value}
        return {"doubleValue": _double(value)}
    if kind is tuple or kind is list:
        if not value:
            return {"arrayValue": {}}
        return {"arrayValue": {"values": [_value(item) for item in value]}}
    if value is None:
        return {}
    if kind is dict:
        if not value:
            return {"kvlistValue": {}}
        return {"kvlistValue": {"values": [_key_value(key, item) for key, item in value.items()]}}
    if kind is bytes:
        return {"bytesValue": base64.b64encode(value).decode("utf-8") if value else ""}
    # subclasses, in the library's order of isinstance checks (bool cannot be subclassed)
    if isinstance(value, str):
        return {"stringValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": _double(value)}
    raise _Unsupported(f"attribute value of type {kind.__name__}")


def _double(value: float) -> float | str:
    """The library's rule for a double (``_json_codec.encode_float``)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _key_value(key: Any, value: Any) -> JsonDict:
    text = key if type(key) is str else str(key)
    if text:
        return {"key": text, "value": _value(value)}
    return {"value": _value(value)}
