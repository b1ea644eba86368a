"""Schema-checking accessors for OTLP JSON from an untrusted file.

Every accessor returns a value of the promised type or ``None``/empty: valid JSON of the
wrong shape (``{"resourceSpans": {"a": 1}}``, ``"startTimeUnixNano": "abc"``,
``"status": null``, a string where an object is expected, ``1e999``) never raises here; the
caller counts what it has to skip.
"""

from __future__ import annotations

import math
from typing import Any

MAX_INT = 1 << 80  # far above any nanosecond time or byte count; bounds int() on huge digits


def obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def objects(value: Any) -> list[dict[str, Any]]:
    return [item for item in items(value) if isinstance(item, dict)]


def integer(value: Any) -> int | None:
    """An int from an int or a decimal string (OTLP JSON encodes 64-bit ints as strings)."""
    kind = type(value)
    if kind is str:
        if len(value) > 30:
            return None
        try:
            parsed = int(value)
        except ValueError:
            return None
        return parsed if -MAX_INT < parsed < MAX_INT else None
    if kind is int:
        return value if -MAX_INT < value < MAX_INT else None
    if kind is float and math.isfinite(value) and value.is_integer():
        return integer(int(value))
    return None


def timestamp(value: Any) -> int | None:
    """Nanoseconds since the epoch as OTLP's fixed64 allows: 0 <= t < 2**63, else ``None``."""
    parsed = integer(value)
    return parsed if parsed is not None and 0 <= parsed < 1 << 63 else None


def number(value: Any) -> float | None:
    """A finite float from an int, a float or a numeric string; never inf or nan."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        as_int = integer(value)
        return None if as_int is None else float(as_int)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and 0 < len(value) <= 40:
        try:
            parsed = float(value)
        except ValueError:
            return None
        return parsed if math.isfinite(parsed) else None
    return None


def any_value(value: Any, depth: int = 0) -> Any:
    """The Python value of an OTLP ``AnyValue`` (bounded depth), ``None`` when unusable."""
    if type(value) is not dict or len(value) != 1:
        return None
    ((key, inner),) = value.items()
    if key == "stringValue":
        return inner if type(inner) is str else None
    if key == "intValue":
        return integer(inner)
    if key == "boolValue":
        return inner if type(inner) is bool else None
    if key == "doubleValue":
        return number(inner)
    if key == "arrayValue" and depth < 4:
        return [any_value(v, depth + 1) for v in items(obj(inner).get("values"))[:256]]
    return None


def attributes(value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if type(value) is not list:
        return out
    for item in value:
        if type(item) is dict:
            key = item.get("key")
            if type(key) is str:
                out[key] = any_value(item.get("value"))
    return out


def text(value: Any, limit: int = 4096) -> str | None:
    return value[:limit] if isinstance(value, str) else None
