"""User attributes at the edge: only OTel-valid values may pass, other values are stringified."""

from __future__ import annotations

import pytest

from conftest import make_telemetry
from memspan.drops import ATTRIBUTE_STRINGIFIED


def test_integer_attribute_beyond_int64_is_stringified() -> None:
    """``phase("p", batch=2**70)`` keeps a Python int that OTLP cannot carry (int64): the OTLP
    encoder logs a traceback and drops the key. docs/telemetry.md: values that are not OTel
    attribute values are stringified."""
    t = make_telemetry()
    try:
        with t.tracker.phase("p", batch=2**70):
            pass
        value = t.span("p").attributes["batch"]
        assert isinstance(value, str) or -(2**63) <= value < 2**63, value
        # stringified, not clamped nor dropped: the exported value is the number's text...
        assert value == str(2**70)
        # ...and the stringification is counted (memspan.recorder.dropped{reason=...})
        assert t.tracker.ledger.count(ATTRIBUTE_STRINGIFIED) == 1
        # int64's own bounds still pass through as integers, uncounted
        with t.tracker.phase("q", low=-(2**63), high=2**63 - 1):
            pass
        bounds = t.span("q").attributes or {}
        assert (bounds["low"], bounds["high"]) == (-(2**63), 2**63 - 1)
        assert t.tracker.ledger.count(ATTRIBUTE_STRINGIFIED) == 1
    finally:
        t.tracker.shutdown()


def test_attribute_whose_str_raises_gives_a_documented_error() -> None:
    """A value whose ``__str__`` raises makes ``phase()`` raise that RuntimeError from inside
    memspan's stringification, not a ValueError/TypeError naming the attribute (nor a
    placeholder string)."""

    class Opaque:
        def __str__(self) -> str:
            raise RuntimeError("no str")

        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    t = make_telemetry()
    try:
        raised: BaseException | None = None
        try:
            with t.tracker.phase("p", thing=Opaque()):
                pass
        except (ValueError, TypeError) as error:
            assert "thing" in str(error)
            raised = error
        except RuntimeError as error:
            pytest.fail(f"memspan let {error!r} out while stringifying attribute 'thing'")
        # no exception at all would mean the value went out as something (a placeholder, an
        # empty string) or was dropped silently: clean_attributes raises a TypeError naming it
        assert isinstance(raised, TypeError), "phase() accepted an attribute it cannot stringify"
        # the phase was refused at its edge: no span was exported
        assert [s.name for s in t.finished()] == []
    finally:
        t.tracker.shutdown()
