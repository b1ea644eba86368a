"""The observable instruments of the telemetry contract, fed by the sampler's state.

Invariants: callbacks do no I/O (they read :class:`~memspan.sampling.SamplerState`); once
:meth:`MemoryInstruments.disable` is called every callback yields nothing, because the SDK
cannot unregister observable instruments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from memspan import names
from memspan.drops import DropLedger
from memspan.metric_catalogue import InstrumentKind, MetricCatalogue
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

    def disable(self) -> None:
        self._enabled = False

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
        counts = self._ledger.snapshot()
        if not counts:  # the counter exists from the start, at zero, for increase() alerts
            return [Observation(0, {})]
        return [
            Observation(count, {names.DROP_REASON: reason})
            for reason, count in sorted(counts.items())
        ]
