"""A finished phase as the OTel SDK's ``ReadableSpan``, and the attributes every path shares.

``start_attributes`` and ``add_exit_attributes`` are the one description of a phase span's
attributes (docs/telemetry.md): the ``deferred``/``sync`` paths build the whole
``ReadableSpan`` from them here; the ``sdk`` path feeds the same dictionaries to an SDK span.

Invariant: a built span is what the SDK would have produced for the same calls: the
provider's resource, instrumentation scope and span limits (attribute count and length,
events, links) apply; values are never re-validated when they are memspan's own figures and
user attributes already cleaned at the phase edge.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from memspan import names, otel_internals
from memspan.phases.figures import BoundaryReader
from memspan.phases.record import PhaseSpan
from memspan.phases.span_path import SpanPath

try:  # BoundedAttributes moved between SDK releases; both spellings are public enough
    from opentelemetry.attributes import BoundedAttributes
except ImportError:  # pragma: no cover
    from opentelemetry.sdk.util import BoundedAttributes  # type: ignore[attr-defined,no-redef]


def start_attributes(phase: PhaseSpan) -> dict[str, Any]:
    """The attributes a phase span has from its start (docs/telemetry.md)."""
    attributes: dict[str, Any] = {
        names.PHASE_NAME: phase.name,
        names.PHASE_PATH: phase.path_text,
        names.PHASE_DEPTH: phase.depth,
        names.PHASE_SCOPE_ID: phase.scope_id,
        names.SESSION_ID: phase.session_id,
        names.THREAD_ID: phase.thread_id,
        names.THREAD_NAME: phase.thread.name,
    }
    if phase.parent is not None:
        attributes[names.PHASE_PARENT_SCOPE_ID] = phase.parent.scope_id
    if phase.entry is not None:
        BoundaryReader.entry_attributes(phase.entry, attributes)
    if phase.trace_root:
        attributes[names.PHASE_TRACE_ROOT] = True
    if phase.depth > len(phase.path):
        attributes[names.PHASE_PATH_TRUNCATED] = True
    if phase.attributes:
        attributes.update(phase.attributes)
    return attributes


def add_exit_attributes(phase: PhaseSpan, attributes: dict[str, Any], keep_reason: str | None
                        ) -> None:
    """What a phase learned at its end: figures, mis-nesting, its step's decision."""
    if phase.exit is not None:
        phase.exit.add_attributes(attributes)
    if phase.misnested is not None:
        attributes[names.PHASE_MISNESTED] = phase.misnested
    if keep_reason is not None:
        attributes[names.STEP_KEEP_REASON] = keep_reason


def build_span(phase: PhaseSpan, path: SpanPath, keep: bool) -> ReadableSpan:
    """The finished SDK span of ``phase``, within the provider's span limits."""
    tracer = path.sdk_tracer
    limits = path.limits
    attributes = start_attributes(phase)
    if phase.sampling_attributes:
        attributes.update(phase.sampling_attributes)
    step = phase.step
    keep_reason = step.decision if step is not None and phase is step.root else None
    add_exit_attributes(phase, attributes, keep_reason)
    extra = phase.extra_attributes
    if extra:
        attributes.update(extra)
    span_attributes: Mapping[str, Any]
    if (extra or phase.sampling_attributes or limits.max_span_attribute_length is not None
            or (limits.max_span_attributes is not None
                and len(attributes) > limits.max_span_attributes)):
        span_attributes = BoundedAttributes(limits.max_span_attributes, attributes,
                                            immutable=True,
                                            max_value_len=limits.max_span_attribute_length)
    else:
        # Every value is already an OTel attribute value (memspan's own figures, and user
        # attributes cleaned when the phase opened) and within the limits: no second check.
        span_attributes = MappingProxyType(attributes)
    events: Sequence[Event] = ()
    if phase.events:
        events = BoundedList.from_seq(limits.max_events, [
            Event(name, _event_attributes(event_attributes, limits), timestamp)
            for name, event_attributes, timestamp in phase.events
        ])
    links: Sequence[Any] = ()
    if phase.links:
        links = BoundedList.from_seq(limits.max_links, phase.links)
    return ReadableSpan(
        name=phase.renamed or phase.name,
        context=phase.span_context,
        parent=phase.parent_span_context,
        resource=tracer.resource,
        attributes=span_attributes,
        events=events,
        links=links,
        kind=SpanKind.INTERNAL,
        instrumentation_info=tracer.instrumentation_info,
        status=phase.status if phase.status is not None else _UNSET,
        start_time=phase.start_ns,
        end_time=phase.end_ns,
        instrumentation_scope=otel_internals.instrumentation_scope(tracer),
    )


_UNSET = Status(StatusCode.UNSET)


def _event_attributes(attributes: dict[str, AttributeValue] | Any, limits: Any) -> Any:
    return BoundedAttributes(limits.max_event_attributes, attributes, immutable=True,
                             max_value_len=limits.max_attribute_length)
