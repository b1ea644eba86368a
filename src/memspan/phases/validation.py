"""Validation at the phase edge: phase names, and the attributes users attach to phases.

A name is a non-blank string (trimmed); paths join names with ``PATH_SEPARATOR`` and stop
growing past ``MAX_DEPTH`` levels.

Invariants: values of OpenTelemetry attribute types (str, bool, int within 64 bits, float and
homogeneous sequences of them) pass through unchanged; any other value is stringified (a value
that cannot be is a ``TypeError`` naming its key), never dropped,
with a warning the first time; keys in the reserved ``memspan.`` namespace are rejected with
an error, because they would overwrite the figures memspan itself reports.

Bad values are bounded and counted, never exported as they are: a ``None`` value is left out
(OTLP has no null, and the text ``"None"`` would be a lie), counted as ``attribute_none``; a
sequence longer than :data:`MAX_SEQUENCE_ITEMS` keeps its first items, counted as
``attribute_truncated`` (a list of 100,000 items would make one span megabytes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.util.types import AttributeValue

from memspan.drops import ATTRIBUTE_NONE, ATTRIBUTE_STRINGIFIED, ATTRIBUTE_TRUNCATED, DropLedger
from memspan.names import PATH_SEPARATOR, RESERVED_PREFIX

#: the deepest nesting a path records (deeper phases keep their parent's path)
MAX_DEPTH = 256

_SCALARS = (str, bool, int, float)
#: the most items a sequence attribute keeps
MAX_SEQUENCE_ITEMS = 1024


_INT64 = range(-(1 << 63), 1 << 63)


def _is_otel_scalar(value: object) -> bool:
    """A value OTLP can carry: integers must fit in 64 bits (OTLP's ``int_value``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value in _INT64
    return isinstance(value, _SCALARS)


def _is_otel_value(value: object) -> bool:
    if _is_otel_scalar(value):
        return True
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        kinds = {type(item) for item in value}
        return len(kinds) <= 1 and all(_is_otel_scalar(item) for item in value)
    return False


def _as_text(key: str, value: object) -> str:
    try:
        return str(value)
    except Exception:
        raise TypeError(f"phase attribute {key!r}: a value of type {type(value).__name__} "
                        "that is not an OpenTelemetry attribute type and cannot be turned into "
                        "text (its __str__ raised)") from None


def clean_attributes(
    attributes: Mapping[str, Any], ledger: DropLedger
) -> dict[str, AttributeValue]:
    """Return span-ready attributes, or raise naming the offending key."""
    cleaned: dict[str, AttributeValue] = {}
    for key, value in attributes.items():
        if not isinstance(key, str) or not key:
            raise TypeError(f"phase attribute keys must be non-empty strings, got {key!r}")
        if key.startswith(RESERVED_PREFIX):
            raise ValueError(
                f"phase attribute {key!r} uses the reserved 'memspan.' namespace; "
                "choose another key"
            )
        if value is None:
            ledger.add(ATTRIBUTE_NONE, warning=f"phase attribute {key!r} is None, which "
                       "OpenTelemetry cannot carry; it was left out")
            continue
        if (isinstance(value, Sequence) and not isinstance(value, (str, bytes))
                and len(value) > MAX_SEQUENCE_ITEMS):
            ledger.add(ATTRIBUTE_TRUNCATED, warning=(
                f"phase attribute {key!r} holds {len(value)} items; only the first "
                f"{MAX_SEQUENCE_ITEMS} are kept"))
            value = tuple(value[:MAX_SEQUENCE_ITEMS])
        if _is_otel_value(value):
            cleaned[key] = tuple(value) if isinstance(value, list) else value
        else:
            ledger.add(
                ATTRIBUTE_STRINGIFIED,
                warning=f"phase attribute {key!r} of type {type(value).__name__} is not an "
                "OpenTelemetry attribute type; it was stringified",
            )
            cleaned[key] = _as_text(key, value)
    return cleaned


def validate_phase_name(name: object) -> str:
    """Return the trimmed phase name; reject anything that is not a non-blank string."""
    if not isinstance(name, str):
        raise TypeError(f"phase name must be a str, got {type(name).__name__}: {name!r}")
    trimmed = name.strip()
    if not trimmed:
        raise ValueError(f"phase name must not be empty or blank, got {name!r}")
    return trimmed


def format_path(path: tuple[str, ...]) -> str:
    """Join phase names from the outermost to the innermost (Stormlog's format)."""
    return PATH_SEPARATOR.join(path)
