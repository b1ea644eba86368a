"""The observable instruments of the telemetry contract, fed by the sampler's state.

Invariants: callbacks do no I/O (they read :class:`~memspan.sampling.SamplerState`); once
:meth:`MemoryInstruments.disable` is called every callback yields nothing, because the SDK
cannot unregister observable instruments.

Counters alerts read (``memspan.recorder.dropped``, ``memspan.oom.count``) carry only labels
whose values are known at start-up, and every series exists at zero from the first export:
Prometheus' ``increase()`` cannot count the first event of a series that appears already at
one. Unbounded detail (the phase path of an OOM) goes to span events, exemplars and bundles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Counter, Meter, Observation
from opentelemetry.util.types import Attributes

from memspan import names
from memspan.drops import REASONS, DropLedger
from memspan.metric_catalogue import InstrumentKind, MetricCatalogue
from memspan.phases.histograms import PhaseWindowPeaks
from memspan.sampling.state import SamplerState
from memspan.sources import STANDARD_SOURCES

#: Every metric the standard sources and the session emit as (name, kind, unit); kind is one of
#: "udc" (up-down counter), "gauge", "counter" or "histogram". Docs and the dashboard
#: consistency test read it; it is the standard :class:`MetricCatalogue` flattened.
METRIC_CATALOGUE: tuple[tuple[str, str, str], ...] = tuple(
    (row.name, row.kind.value, row.unit)
    for row in MetricCatalogue.for_sources(STANDARD_SOURCES).rows
)


class MemoryInstruments:
    """Registers an observable instrument per sampled row of the catalogue, plus the drop
    counter (whose callback also runs ``before_collect``: see :meth:`_drain_phases_then_report_drops`)."""

    def __init__(
        self,
        meter: Meter,
        state_provider: Callable[[], SamplerState],
        ledger: DropLedger,
        *,
        catalogue: MetricCatalogue | None = None,
        emit_rss: bool = True,
        before_collect: Callable[[], object] | None = None,
        phase_peaks: PhaseWindowPeaks | None = None,
    ) -> None:
        self._state = state_provider
        self._before_collect = before_collect
        self._ledger = ledger
        self._enabled = True
        self.names: list[str] = []
        catalogue = catalogue if catalogue is not None else MetricCatalogue.for_sources(
            STANDARD_SOURCES)
        for row in catalogue.sampled:
            if row.name == names.PROCESS_MEMORY_USAGE and not emit_rss:
                continue
            callback = (self._peak_callback(row.name) if row.window_peak
                        else self._latest_callback(row.name))
            if row.kind is InstrumentKind.UP_DOWN_COUNTER:
                meter.create_observable_up_down_counter(
                    row.name, [callback], row.unit, row.description)
            elif row.kind is InstrumentKind.GAUGE:
                meter.create_observable_gauge(row.name, [callback], row.unit, row.description)
            elif row.kind is InstrumentKind.COUNTER:
                meter.create_observable_counter(row.name, [callback], row.unit, row.description)
            else:
                raise ValueError(f"metric {row.name!r}: a sampled metric cannot be a {row.kind}")
            self.names.append(row.name)
        dropped = catalogue.row(names.RECORDER_DROPPED)
        meter.create_observable_counter(
            dropped.name, [self._drain_phases_then_report_drops], dropped.unit, dropped.description)
        self.names.append(dropped.name)
        self._phase_peaks = phase_peaks
        if phase_peaks is not None:  # after the drop counter, whose callback drains phases
            row = catalogue.row(names.PHASE_MEMORY_WINDOW_PEAK)
            meter.create_observable_gauge(row.name, [phase_peaks.observe], row.unit,
                                          row.description)
            self.names.append(row.name)

    def disable(self) -> None:
        self._enabled = False
        if self._phase_peaks is not None:
            self._phase_peaks.disable()

    def _latest_callback(self, metric: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if not self._enabled:
                return []
            return [Observation(v, dict(a)) for v, a in self._state().latest(metric)]

        return callback

    def _peak_callback(self, metric: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if not self._enabled:
                return []
            return [Observation(v, dict(a)) for v, a in self._state().take_window_peaks(metric)]

        return callback

    def _drain_phases_then_report_drops(self, options: CallbackOptions) -> Iterable[Observation]:
        """Two jobs in one callback: first drain finished phases (``before_collect``), then
        report the drop ledger. Collection runs every observable callback before it reads the
        synchronous instruments, so phase histograms drained here land in this collection;
        and the drops the drain counts are in this report."""
        if self._before_collect is not None:
            self._before_collect()
        if not self._enabled:
            return []
        # every known reason from the start, at zero, so increase() counts its first drop
        counts = dict.fromkeys(REASONS, 0)
        counts.update(self._ledger.snapshot())
        return [
            Observation(count, {names.DROP_REASON: reason})
            for reason, count in sorted(counts.items())
        ]


class AlertCounter(Counter):
    """A synchronous counter alerts can use: one label with a vocabulary known at start-up,
    every series created at zero when this wrapper is built.

    Invariants: only ``label`` reaches the counter (other attributes a caller passes, such as
    a phase path, are dropped here: they are in the span event and the bundle); a value
    outside ``values`` is counted under ``fallback`` (also created at zero), so the series
    set never grows after start-up. ``add(0)`` without the label is a no-op (the zeros exist).
    The current context is passed through, so the SDK may attach an exemplar.
    """

    def __init__(self, counter: Counter, label: str, values: Sequence[str],
                 fallback: str = "unknown") -> None:
        self._counter = counter
        self._label = label
        self._values = frozenset(values) | {fallback}
        self._fallback = fallback
        for value in [*values, fallback]:
            counter.add(0, {label: value})

    def add(self, amount: float, attributes: Attributes = None,
            context: Context | None = None) -> None:
        value = (attributes or {}).get(self._label)
        if value is None:
            if amount == 0:
                return
            value = self._fallback
        elif value not in self._values:
            value = self._fallback
        self._counter.add(amount, {self._label: value}, context)
