"""Memory-aware step sampling: which step traces are worth exporting.

A *step* is the trace started by a trace-root phase (``phase("step", trace_root=True)`` or a
name in ``MEMSPAN_TRACE_ROOTS``). When its root phase ends, :class:`StepSampler` decides
whether the step's phase spans are exported. A step is always kept when it

1. contains a phase that ended with an error (``error``) or an OOM (``oom``),
2. contains spans of other instrumentations (``foreign``: they would lose their parent),
3. sets a new peak for one of its phase paths, by more than ``peak_increase_bytes``
   (``new_peak``; the first run of a path is a new peak),
4. retained more than ``retained_bytes`` over the root phase (``retained``),
5. is one of the first ``keep_first`` steps of the session (``first``),

and otherwise one step in ``keep_every`` is kept (``sampled``) and the rest are dropped.
With ``keep_every == 1`` (the default) every step is kept without buffering (reason
``all``); a step still waiting at shutdown, or pushed out of a full buffer, is kept
(``overflow``).

Invariants: the decision changes only what is exported as spans. Every phase is recorded in
the histograms and the flight recorder whatever the decision (histogram exemplars point only
at exported spans); the kept and dropped steps are counted in ``memspan.step.count``.
The state is bounded: at most ``max_paths`` path peaks are remembered (further paths count as
new peaks, so they are kept, never lost).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from memspan.phases.record import PhaseSpan, StepTrace

if TYPE_CHECKING:
    from memspan.config import MemspanConfig

ERROR = "error"
OOM = "oom"
FOREIGN = "foreign"
NEW_PEAK = "new_peak"
RETAINED = "retained"
FIRST = "first"
SAMPLED = "sampled"
OVERFLOW = "overflow"
ALL = "all"
DROPPED = "dropped"


@dataclass(frozen=True)
class StepSamplingConfig:
    """How many steps to keep; see the module docstring for each rule."""

    keep_every: int = 1
    keep_first: int = 10
    retained_bytes: int = 64 << 20
    peak_increase_bytes: int = 1 << 20

    @classmethod
    def from_config(cls, config: MemspanConfig) -> StepSamplingConfig:
        """The ``MEMSPAN_STEP_*`` settings of a session."""
        return cls(keep_every=config.step_keep_every, keep_first=config.step_keep_first,
                   retained_bytes=int(config.step_keep_retained_mb * (1 << 20)),
                   peak_increase_bytes=int(config.step_peak_increase_mb * (1 << 20)))

    def __post_init__(self) -> None:
        if self.keep_every < 1:
            raise ValueError(f"keep_every={self.keep_every!r} must be >= 1")
        for name in ("keep_first", "retained_bytes", "peak_increase_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")


class StepSampler:
    """Decides steps in the order their roots end (one thread: the export worker)."""

    def __init__(self, config: StepSamplingConfig, max_paths: int = 4096) -> None:
        self.config = config
        self.max_paths = max_paths
        self._peaks: dict[str, int] = {}
        self._steps = 0

    @property
    def keeps_all(self) -> bool:
        return self.config.keep_every == 1

    def decide(self, step: StepTrace) -> str:
        """The keep reason for ``step`` (``"dropped"`` when it is not kept)."""
        self._steps += 1
        records = (*step.buffered, step.root)
        reason = self._evidence(step, records)
        if reason is None:
            if self._steps <= self.config.keep_first:
                reason = FIRST
            elif (self._steps - self.config.keep_first) % self.config.keep_every == 0:
                reason = SAMPLED
            else:
                reason = DROPPED
        step.decision = reason
        return reason

    def _evidence(self, step: StepTrace, records: tuple[PhaseSpan, ...]) -> str | None:
        new_peak = self._new_peak(records)  # every step updates its paths' peaks
        reason: str | None = None
        for record in records:
            if record.oom:
                return OOM
            if record.error is not None and reason is None:
                reason = ERROR
        if reason is not None:
            return reason
        if step.foreign:
            return FOREIGN
        if new_peak:
            return NEW_PEAK
        figures = step.root.exit
        if figures is not None and figures.retained is not None and (
                figures.retained > self.config.retained_bytes):
            return RETAINED
        return None

    def _new_peak(self, records: tuple[PhaseSpan, ...]) -> bool:
        """Whether a record beats its path's best peak; updates every path's best."""
        found = False
        peaks = self._peaks
        margin = self.config.peak_increase_bytes
        for record in records:
            figures = record.exit
            peak = figures.primary_peak if figures is not None else None
            if peak is None:
                continue
            best = peaks.get(record.path_text)
            if best is None:
                if len(peaks) < self.max_paths:
                    peaks[record.path_text] = peak
                found = True
            elif peak > best:
                peaks[record.path_text] = peak
                if peak - best > margin:
                    found = True
        return found
