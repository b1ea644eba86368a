"""The drop ledger: every piece of telemetry memspan deliberately discards is counted here.

Invariant: each bounded structure (ring buffer, output files, export queue, sources that
failed) calls :meth:`DropLedger.add` with a reason for everything it refuses or evicts; the
ledger is exported as the ``memspan.recorder.dropped`` counter and never itself grows with
load (one integer per reason, reasons are a fixed vocabulary, :data:`REASONS`, every one
exported at zero from the start).
"""

from __future__ import annotations

import logging
import threading
from typing import Final

from memspan import names

_logger = logging.getLogger("memspan")

RING_OVERFLOW: Final = "ring_overflow"
EVENT_TRUNCATED: Final = "event_truncated"
OUTPUT_ROTATED: Final = "output_rotated"
OUTPUT_OVERSIZED: Final = "output_oversized"
OUTPUT_SPAN_OVERSIZED: Final = "output_span_oversized"
OUTPUT_WRITE_FAILED: Final = "output_write_failed"
SOURCE_ERROR: Final = "source_error"
EXPORT_QUEUE_FULL: Final = "export_queue_full"
BREADCRUMB_ERROR: Final = "breadcrumb_error"
DUMP_FAILED: Final = "dump_failed"
DUMP_RATE_LIMITED: Final = "dump_rate_limited"
CALLBACK_ERROR: Final = "callback_error"
ATTRIBUTE_STRINGIFIED: Final = "attribute_stringified"
PROTOCOL_ERROR: Final = "protocol_error"
PHASE_MISNESTED: Final = "phase_misnested"
PHASE_BUFFER_FULL: Final = "phase_buffer_full"
PHASE_PATH_TRUNCATED: Final = "phase_path_truncated"
STEP_BUFFER_FULL: Final = "step_buffer_full"
LISTENER_ERROR: Final = "listener_error"
LEAK_WATCH_PATHS: Final = "leak_watch_paths"
#: an event recorded by a signal handler that interrupted its own thread inside the ring
SIGNAL_REENTRY: Final = "signal_reentry"
#: a phase path beyond the bound of the phase window-peak gauge's series
PHASE_PEAK_SERIES_FULL: Final = "phase_peak_series_full"
#: a finished phase whose span was not handed to the span processors by a shutdown's deadline
EXPORT_DEADLINE: Final = "export_deadline"
#: a phase attribute whose value was ``None`` (OpenTelemetry has no null): left out
ATTRIBUTE_NONE: Final = "attribute_none"
#: a sequence attribute cut to its first ``MAX_SEQUENCE_ITEMS`` items
ATTRIBUTE_TRUNCATED: Final = "attribute_truncated"
#: a distinct phase path embedding a number, recorded in the histograms under its template
PHASE_PATH_FOLDED: Final = "phase_path_folded"

#: Every reason, known at start-up: the drop counter reports each one from its first export
#: (at zero until it happens), so ``increase()`` counts the first drop of every reason. A
#: reason added above must be added here (``tests/test_drops.py`` checks it).
REASONS: Final = (
    RING_OVERFLOW, EVENT_TRUNCATED, OUTPUT_ROTATED, OUTPUT_OVERSIZED, OUTPUT_SPAN_OVERSIZED,
    OUTPUT_WRITE_FAILED, SOURCE_ERROR, EXPORT_QUEUE_FULL, BREADCRUMB_ERROR, DUMP_FAILED,
    DUMP_RATE_LIMITED, CALLBACK_ERROR, ATTRIBUTE_STRINGIFIED, PROTOCOL_ERROR, PHASE_MISNESTED,
    PHASE_BUFFER_FULL, PHASE_PATH_TRUNCATED, STEP_BUFFER_FULL, LISTENER_ERROR, LEAK_WATCH_PATHS,
    SIGNAL_REENTRY, PHASE_PEAK_SERIES_FULL, EXPORT_DEADLINE, ATTRIBUTE_NONE,
    ATTRIBUTE_TRUNCATED, PHASE_PATH_FOLDED,
)


class DropLedger:
    """Counts by reason, thread-safe, plus a one-time warning per reason."""

    def __init__(self) -> None:
        # re-entrant: a signal handler that interrupts this thread inside add() and counts a
        # drop itself must not deadlock (its count may then be overwritten, never blocked)
        self._lock = threading.RLock()
        self._counts: dict[str, int] = {}
        self._warned: set[str] = set()

    def add(self, reason: str, count: int = 1, *, warning: str | None = None) -> None:
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + count
            first = reason not in self._warned
            if first:
                self._warned.add(reason)
        if first and warning:
            _logger.warning("memspan: %s (further occurrences are only counted in %s{%s=%s})",
                            warning, names.RECORDER_DROPPED, names.DROP_REASON, reason)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def count(self, reason: str) -> int:
        with self._lock:
            return self._counts.get(reason, 0)


#: The ledger shared by what a process builds from entry points (the instrumentor's tracker and
#: the embedded file exporters), so all their drops are exported by one instrument.
PROCESS_LEDGER = DropLedger()
