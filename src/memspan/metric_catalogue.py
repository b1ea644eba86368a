"""The metric catalogue: one row per metric memspan emits, and who reads which column.

A :class:`MetricRow` says how a metric is exported (instrument kind, unit, description),
whether its value is the peak over an export window, and which flight-recorder event a rise
of a counter becomes. Rows of sampled metrics live beside the code that reads them: each
memory source class declares its rows (``metrics``) and its cadence (``cadence``), so a new
source is its own file. Rows of the instruments the session creates itself (drop counter,
phase histograms, OOM count) are :data:`SESSION_ROWS` here.

Invariants: a session's :class:`MetricCatalogue` holds the rows of the standard sources, of
every source it was given, and the session rows, each name once (two different rows under
one name are refused); the instruments, the sampler (counters), its state (window peaks) and
the flight recorder (counter events) all read that one catalogue, never lists of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Final

from memspan import names
from memspan.names import EventType

BYTES: Final = "By"
ONE: Final = "1"


class InstrumentKind(str, Enum):
    """The OTel instrument a metric is exported through."""

    UP_DOWN_COUNTER = "udc"
    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"


class Cadence(str, Enum):
    """How often the sampler asks a source: every tick, or every ``slow_interval``."""

    FAST = "fast"
    SLOW = "slow"


@dataclass(frozen=True, slots=True)
class MetricRow:
    """One metric: name, instrument kind, unit, description and how it is treated.

    ``window_peak``: the exported value is the highest sample since the previous collection
    (an observable gauge). ``counter_event``: a rise of this counter between two samples is
    recorded in the flight recorder's ring as an event of that type.
    """

    name: str
    kind: InstrumentKind
    unit: str
    description: str
    window_peak: bool = False
    counter_event: EventType | None = None

    def __post_init__(self) -> None:
        if self.window_peak and self.kind is not InstrumentKind.GAUGE:
            raise ValueError(f"metric {self.name!r}: a window peak is exported as a gauge")
        if self.counter_event is not None and self.kind is not InstrumentKind.COUNTER:
            raise ValueError(f"metric {self.name!r}: only a counter's rise becomes an event")


#: Instruments the session creates itself rather than a memory source feeding them.
SESSION_ROWS: Final = (
    MetricRow(names.RECORDER_DROPPED, InstrumentKind.COUNTER, ONE,
              "Telemetry memspan discarded to stay bounded, by reason"),
    MetricRow(names.PHASE_DURATION, InstrumentKind.HISTOGRAM, "s", "Duration of a phase"),
    MetricRow(names.PHASE_MEMORY_PEAK, InstrumentKind.HISTOGRAM, BYTES,
              "Peak memory of a phase (allocator on a GPU, RSS on a host)"),
    MetricRow(names.PHASE_MEMORY_WINDOW_PEAK, InstrumentKind.GAUGE, BYTES,
              "Highest peak memory of a phase path's runs that ended since the previous "
              "export (the last such value when none ended)"),
    MetricRow(names.OOM_COUNT, InstrumentKind.COUNTER, ONE,
              "Out-of-memory errors seen by memspan, by kind (every kind from zero)"),
)


def source_rows(source: object) -> tuple[MetricRow, ...]:
    """The rows a source (class or instance) declares; none for a source without ``metrics``."""
    rows = getattr(source, "metrics", ())
    return tuple(rows)


def source_cadence(source: object) -> Cadence:
    """The cadence a source declares; :attr:`Cadence.FAST` when it declares none."""
    cadence = getattr(source, "cadence", Cadence.FAST)
    return cadence if isinstance(cadence, Cadence) else Cadence(cadence)


class MetricCatalogue:
    """The rows of one session: sampled rows (from its sources) and the session rows."""

    def __init__(self, sampled: Iterable[MetricRow], session: Iterable[MetricRow] = SESSION_ROWS,
                 ) -> None:
        by_name: dict[str, MetricRow] = {}
        sampled_rows: list[MetricRow] = []
        for row, is_sampled in [*((r, True) for r in sampled), *((r, False) for r in session)]:
            known = by_name.get(row.name)
            if known is not None:
                if known != row:
                    raise ValueError(f"metric {row.name!r} is declared twice, differently: "
                                     f"{known} and {row}")
                continue
            by_name[row.name] = row
            if is_sampled:
                sampled_rows.append(row)
        self._by_name: Mapping[str, MetricRow] = by_name
        #: Rows of metrics the sampler's state feeds (observable instruments), in order.
        self.sampled: tuple[MetricRow, ...] = tuple(sampled_rows)
        #: Every row, sampled first.
        self.rows: tuple[MetricRow, ...] = tuple(by_name.values())
        #: Sampled metrics whose state keeps the peak since the previous collection.
        self.window_peaks: frozenset[str] = frozenset(r.name for r in self.sampled if r.window_peak)
        #: Sampled counters: the sampler reports their rises.
        self.counters: frozenset[str] = frozenset(
            r.name for r in self.sampled if r.kind is InstrumentKind.COUNTER)
        #: The flight-recorder event a rise of each counter becomes.
        self.counter_events: Mapping[str, EventType] = {
            r.name: r.counter_event for r in self.sampled if r.counter_event is not None}

    @classmethod
    def for_sources(cls, *sources: Iterable[object]) -> MetricCatalogue:
        """The catalogue of the given sources (classes or instances), in order, plus the
        session rows."""
        return cls(row for group in sources for source in group for row in source_rows(source))

    def row(self, name: str) -> MetricRow:
        """The row of ``name``; ``KeyError`` naming it when the catalogue has none."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"metric {name!r} is not in the metric catalogue") from None

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


__all__ = ["BYTES", "ONE", "SESSION_ROWS", "Cadence", "InstrumentKind", "MetricCatalogue",
           "MetricRow", "source_cadence", "source_rows"]
