"""The two phase histograms, recorded by the export worker in batches.

``memspan.phase.duration`` (by path) and ``memspan.phase.memory.peak`` (by path and device)
get one record per phase, whatever the step sampler decided. Exemplars are offered only for
the last record of each series and bucket in a batch, and only when that phase's span is
exported and sampled: the SDK's default reservoir keeps one exemplar per bucket (the last
offered), so this keeps what the reservoir would have kept and never links to a span that
does not exist. Other records pass an empty context, which the trace-based exemplar filter
rejects at once.

``memspan.phase.memory.window_peak`` (:class:`PhaseWindowPeaks`, by path and device) is the
exact highest peak of the runs of a path that ended since the previous collection, so a
dashboard reads a phase's peak to the byte (the histogram's buckets only bound it within a
factor of two) and a path that ran once is shown from the first collection after it ran.

Invariant: every record handed to :meth:`PhaseHistograms.record_batch` is recorded exactly once.
The attribute dicts are cached per series (bounded; the cache is cleared when full, which
costs only allocations).
"""

from __future__ import annotations

import logging
import threading
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, Observation
from opentelemetry.trace import NonRecordingSpan, SpanContext

from memspan import names, otel_internals
from memspan.drops import PHASE_PEAK_SERIES_FULL, DropLedger
from memspan.metric_catalogue import MetricRow

_logger = logging.getLogger(__name__)

BYTE_BUCKETS = tuple(float(1 << k) for k in range(20, 41))  # 1 MiB .. 1 TiB
SECOND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                  10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

_EMPTY = Context()
_MAX_SERIES = 10_000

#: (duration in s, primary peak in bytes or None, path, device, span context to link or None)
PhaseSample = tuple[float, "int | None", str, str, "SpanContext | None"]


class PhaseHistograms:
    """``memspan.phase.duration`` and ``memspan.phase.memory.peak``, by phase path."""

    @classmethod
    def create(cls, meter: Meter, duration: MetricRow, peak: MetricRow, *,
               window_peaks: PhaseWindowPeaks | None = None) -> PhaseHistograms:
        """Both histograms on ``meter``, from their catalogue rows, with memspan's buckets;
        every peak recorded is also offered to ``window_peaks`` (whose gauge is registered
        elsewhere, after the collection hook that drains finished phases)."""
        return cls(
            meter.create_histogram(duration.name, unit=duration.unit,
                                   description=duration.description,
                                   explicit_bucket_boundaries_advisory=SECOND_BUCKETS),
            meter.create_histogram(peak.name, unit=peak.unit, description=peak.description,
                                   explicit_bucket_boundaries_advisory=BYTE_BUCKETS),
            window_peaks=window_peaks,
        )

    def __init__(self, duration: Histogram, peak: Histogram, *, direct: bool = True,
                 window_peaks: PhaseWindowPeaks | None = None) -> None:
        self._duration = duration
        self._peak = peak
        self._window_peaks = window_peaks
        self._series_cache: dict[tuple[str, str], _Series] = {}
        self._direct_duration = DirectAggregation(duration) if direct else None
        self._direct_peak = DirectAggregation(peak) if direct else None

    def _series(self, path: str, device: str) -> _Series:
        series = self._series_cache.get((path, device))
        if series is None:
            if len(self._series_cache) >= _MAX_SERIES:
                self._series_cache.clear()
            series = _Series(path, device)
            self._series_cache[(path, device)] = series
        return series

    def record_batch(self, samples: Sequence[PhaseSample]) -> None:
        """Record every sample; exemplar contexts for the last one per series and bucket."""
        if not samples:
            return
        offered: set[tuple[Any, ...]] = set()
        key: tuple[Any, ...]
        direct_duration, direct_peak = self._direct_duration, self._direct_peak
        duration_generation = direct_duration.refresh() if direct_duration is not None else -1
        peak_generation = direct_peak.refresh() if direct_peak is not None else -1
        duration_value = _Recorded(0.0, self._duration)
        peak_value = _Recorded(0, self._peak)
        maxima: dict[tuple[str, str], int] = {}
        for duration_s, peak, path, device, span_context in reversed(samples):
            series = self._series(path, device)
            context = _EMPTY
            if span_context is not None:
                key = (path, bisect_left(SECOND_BUCKETS, duration_s))
                if key not in offered:
                    offered.add(key)
                    context = _link(span_context)
            if context is _EMPTY and direct_duration is not None:
                series.duration.record(direct_duration, duration_generation, duration_value,
                                       duration_s, series.by_path)
            else:
                self._duration.record(duration_s, series.by_path, context=context)
            if peak is None:
                continue
            if peak > maxima.get((path, device), -1):
                maxima[(path, device)] = peak
            peak_context = _EMPTY
            if span_context is not None:
                key = (path, device, bisect_left(BYTE_BUCKETS, peak))
                if key not in offered:
                    offered.add(key)
                    peak_context = context if context is not _EMPTY else _link(span_context)
            if peak_context is _EMPTY and direct_peak is not None:
                series.peak.record(direct_peak, peak_generation, peak_value, peak,
                                   series.by_device)
            else:
                self._peak.record(peak, series.by_device, context=peak_context)
        if self._window_peaks is not None and maxima:
            self._window_peaks.offer(maxima)


class PhaseWindowPeaks:
    """The highest phase peak per (path, device) since the previous collection, exported as
    the observable gauge ``memspan.phase.memory.window_peak``.

    Invariants: a collection reports, for every series it knows, the highest peak of the
    runs that ended since the previous collection, or, when none ended, the value it
    reported last (a path that ran once stays readable at its true peak); values are the
    recorded integers, never bucket bounds. At most ``max_series`` series are kept; a path
    beyond that is counted (``phase_peak_series_full``), never silently lost. One lock,
    taken once per batch and once per collection.
    """

    def __init__(self, ledger: DropLedger, *, max_series: int = 1000) -> None:
        self._ledger = ledger
        self._max_series = max_series
        self._lock = threading.Lock()
        self._window: dict[tuple[str, str], int] = {}
        self._shown: dict[tuple[str, str], int] = {}
        self._known: set[tuple[str, str]] = set()
        self._enabled = True

    def offer(self, maxima: dict[tuple[str, str], int]) -> None:
        """Merge one batch's highest peak per series into the current window."""
        refused = 0
        with self._lock:
            for key, peak in maxima.items():
                if key not in self._known:
                    if len(self._known) >= self._max_series:
                        refused += 1
                        continue
                    self._known.add(key)
                known = self._window.get(key)
                if known is None or peak > known:
                    self._window[key] = peak
        if refused:
            self._ledger.add(PHASE_PEAK_SERIES_FULL, refused, warning=(
                f"more than {self._max_series} phase paths: the peaks of new ones are not in "
                f"{names.PHASE_MEMORY_WINDOW_PEAK}"))

    def disable(self) -> None:
        """Report nothing from now on (the SDK cannot unregister an observable gauge)."""
        self._enabled = False

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        """The gauge's callback: close the window, report every known series."""
        if not self._enabled:
            return []
        with self._lock:
            self._shown.update(self._window)
            self._window = {}
            shown = sorted(self._shown.items())
        return [Observation(peak, {names.PHASE_PATH: path, names.MEMORY_DEVICE: device})
                for (path, device), peak in shown]


class _Series:
    """One phase path on one device: its attribute dicts and its two histograms' kept
    aggregations."""

    __slots__ = ("by_device", "by_path", "duration", "peak")

    def __init__(self, path: str, device: str) -> None:
        self.by_path: dict[str, Any] = {names.PHASE_PATH: path}
        self.by_device: dict[str, Any] = {names.PHASE_PATH: path, names.MEMORY_DEVICE: device}
        self.duration = _Kept()
        self.peak = _Kept()


class _Kept:
    """The SDK aggregations one series records into directly, valid for one reader
    generation of its :class:`DirectAggregation`; found at the first record."""

    __slots__ = ("aggregations", "generation")

    def __init__(self) -> None:
        self.aggregations: list[Any] = []
        self.generation = -2  # never a valid generation

    def record(self, direct: DirectAggregation, generation: int, measurement: _Recorded,
               value: float, attributes: dict[str, Any]) -> None:
        """Record ``value`` without an exemplar (``measurement`` is reused, only its value
        is set): straight into the kept aggregations, else through the SDK, finding them."""
        if self.generation == generation:
            measurement.value = value
            for aggregation in self.aggregations:
                aggregation.aggregate(measurement, False)
            return
        found = direct.record_first(value, attributes)
        if found is not None:
            self.aggregations = found
            self.generation = generation


def _link(span_context: SpanContext) -> Context:
    return trace.set_span_in_context(NonRecordingSpan(span_context), _EMPTY)


class DirectAggregation:
    """Records without an exemplar straight into the SDK's aggregations of one histogram.

    The SDK's ``Histogram.record`` validates the attributes, builds a measurement, asks the
    exemplar filter, hashes the attributes and finds the aggregation of every reader on each
    call (about 7 µs here); the aggregation itself costs about 1 µs. For a series seen before,
    the caller keeps the aggregations of every reader (found by :meth:`record_first`) and
    calls their ``aggregate`` directly with a measurement carrying no context (so no exemplar
    is offered, as with an empty context).

    Used only where it provably does what ``record`` does: the SDK's synchronous measurement
    consumer, cumulative storage (delta storage replaces its aggregations at each collection),
    no view that filters attributes, and a series key the SDK itself would compute. Anything
    else goes through ``record`` (the first record of every series always does, so the SDK
    creates the aggregations). A reader added or removed changes :meth:`refresh`'s
    generation, which invalidates every kept aggregation. Otherwise results are identical.
    """

    def __init__(self, histogram: Histogram) -> None:
        self._histogram = histogram
        self._storages: object = None
        self._generation = 0
        self._usable = otel_internals.has_measurement_consumer(histogram)

    def refresh(self) -> int:
        """The current reader generation (once per batch); -1 when direct records are off."""
        if not self._usable:
            return -1
        storages = otel_internals.histogram_reader_storages(self._histogram)
        if storages is not self._storages:  # readers added or removed: find them again
            self._storages = storages
            self._generation += 1
        return self._generation

    def record_first(self, value: float, attributes: dict[str, Any]) -> list[Any] | None:
        """Record through the SDK; return the series' aggregations for direct records
        (None: not provable here, keep recording through the SDK)."""
        self._histogram.record(value, attributes, context=_EMPTY)
        if not self._usable:
            return None
        return self._find(attributes)

    def _find(self, attributes: dict[str, Any]) -> list[Any] | None:
        """Every reader's aggregation of this series, or None where any is not provable."""
        try:
            return otel_internals.series_aggregations(self._storages, self._histogram,
                                                      _series_keys(attributes))
        except Exception:  # an SDK whose internals differ: record() for this series
            _logger.debug("memspan: direct histogram aggregation unavailable", exc_info=True)
            self._usable = False
            return None


class _Recorded:
    """What an SDK aggregation reads of a measurement it is told not to sample as an
    exemplar (the value; the rest is there for the measurement's shape)."""

    __slots__ = ("attributes", "context", "instrument", "time_unix_nano", "value")

    def __init__(self, value: float, instrument: Histogram) -> None:
        self.value = value
        self.time_unix_nano = 0
        self.instrument = instrument
        self.context = _EMPTY
        self.attributes = None


def _series_keys(attributes: dict[str, Any]) -> list[Any]:
    """The aggregation keys SDK releases use for an attribute set (newest first)."""
    keys: list[Any] = []
    if otel_internals.hash_attributes is not None:
        keys.append(otel_internals.hash_attributes(attributes))
    keys.append(frozenset(attributes.items()))
    return keys
