"""The two phase histograms, recorded by the export worker in batches.

``memspan.phase.duration`` (by path) and ``memspan.phase.memory.peak`` (by path and device)
get one record per phase, whatever the step sampler decided. Exemplars are offered only for
the last record of each series and bucket in a batch, and only when that phase's span is
exported and sampled: the SDK's default reservoir keeps one exemplar per bucket (the last
offered), so this keeps what the reservoir would have kept and never links to a span that
does not exist. Other records pass an empty context, which the trace-based exemplar filter
rejects at once.

Invariant: every record handed to :meth:`PhaseHistograms.record_batch` is recorded exactly once.
The attribute dicts are cached per series (bounded; the cache is cleared when full, which
costs only allocations).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import Histogram
from opentelemetry.trace import NonRecordingSpan, SpanContext

from memspan import names

BYTE_BUCKETS = tuple(float(1 << k) for k in range(20, 41))  # 1 MiB .. 1 TiB
SECOND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                  10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

_EMPTY = Context()
_MAX_SERIES = 10_000

#: (duration in s, primary peak in bytes or None, path, device, span context to link or None)
PhaseSample = tuple[float, "int | None", str, str, "SpanContext | None"]


class PhaseHistograms:
    def __init__(self, duration: Histogram, peak: Histogram) -> None:
        self._duration = duration
        self._peak = peak
        self._attributes: dict[tuple[str, str], tuple[dict[str, Any], dict[str, Any]]] = {}

    def _series(self, path: str, device: str) -> tuple[dict[str, Any], dict[str, Any]]:
        attributes = self._attributes.get((path, device))
        if attributes is None:
            if len(self._attributes) >= _MAX_SERIES:
                self._attributes.clear()
            attributes = ({names.PHASE_PATH: path},
                          {names.PHASE_PATH: path, names.MEMORY_DEVICE: device})
            self._attributes[(path, device)] = attributes
        return attributes

    def record_batch(self, samples: Sequence[PhaseSample]) -> None:
        """Record every sample; exemplar contexts for the last one per series and bucket."""
        offered: set[tuple[Any, ...]] = set()
        key: tuple[Any, ...]
        for duration_s, peak, path, device, span_context in reversed(samples):
            by_path, by_device = self._series(path, device)
            context = _EMPTY
            if span_context is not None:
                key = (path, bisect_left(SECOND_BUCKETS, duration_s))
                if key not in offered:
                    offered.add(key)
                    context = _link(span_context)
            self._duration.record(duration_s, by_path, context=context)
            if peak is None:
                continue
            peak_context = _EMPTY
            if span_context is not None:
                key = (path, device, bisect_left(BYTE_BUCKETS, peak))
                if key not in offered:
                    offered.add(key)
                    peak_context = context if context is not _EMPTY else _link(span_context)
            self._peak.record(peak, by_device, context=peak_context)


def _link(span_context: SpanContext) -> Context:
    return trace.set_span_in_context(NonRecordingSpan(span_context), _EMPTY)
