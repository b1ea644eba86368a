"""Which phase raised the memory that stays: retained bytes attributed to each run.

The runs under one parent path (every ``step``'s ``data``, ``forward``, ``backward``,
``optimizer``, in the order they end) form one stream of points: each run's start level and
end level. A run *retains* the rise of the retained baseline across it: the lowest level from
its end to the end of the next run of the same path, less the lowest level from its start to
the start of that next run (two windows of one cycle, one point apart). Retained bytes are
signed, and their expectation is zero under noise that does not trend. The look-ahead nets
out what the rest of the cycle and the next cycle free: activations made in
``forward`` and freed in ``backward``, gradients that the next step's ``zero_grad`` drops, the
batch the next ``data`` replaces. What stays is charged to the run that made it: a list that
``forward`` keeps growing to ``forward``; a tensor that the step's own code keeps after
``optimizer`` to no child (the step's own run, in its parent's stream, retains it).

Runs of a path with no parent path (``train``, a seed scenario's task) form their own stream;
runs of different processes (``FinishedRun.stream``) never share one.

What the gaps between a stream's runs raise belongs to none of them (the parent's own code:
a tensor the step keeps after ``optimizer``, an eval between steps): the stream's levels are
taken net of the gaps' signed sum while it is positive, so a parent that keeps growing does not
hide a release that its children's next cycle makes (its +1 MiB a step would otherwise sit
under every look-ahead minimum and be read as the children's). A sum that turns negative (the
parent's code freeing what its children made) is not taken off, so a child's allocation that
the parent frees never looks retained; reading noise in the gaps sums to a random walk, not a
drift.

Invariants: a run's retained bytes are known once the next run of its path (under the same
parent path) has ended, or at :meth:`CycleAttribution.finish`; retained bytes are never summed
from a run's own deltas, so a sibling's release is never a negative hold of its own. Bounded:
at most ``max_paths`` paths and streams (runs beyond them counted in ``dropped_paths``) and ``max_points``
points per stream (when full, the oldest waiting run is attributed with the look-ahead it has).
"""

from __future__ import annotations

from dataclasses import dataclass

from memspan.analysis.run_series import RunSeries

PATH_SEPARATOR = " / "
_ROOT = "\0root"


@dataclass(frozen=True, slots=True)
class FinishedRun:
    """One finished run: its path, its levels (memory in use) at its edges, and the most it
    added above its start at its peak when that is known exactly (``None`` otherwise)."""

    path: str
    start: int
    end: int
    peak_added: int | None = None
    stream: str = ""  # the process (session) it ran in: runs of two processes never mix


class _Stream:
    """The points of the runs under one parent path, and the run of each path waiting for its
    successor (indices are absolute; ``offset`` is the index of ``levels[0]``)."""

    __slots__ = ("gaps", "last_end", "levels", "offset", "waiting")

    def __init__(self) -> None:
        self.levels: list[int] = []
        self.last_end: int | None = None  # the raw end level of the last run
        self.gaps = 0  # the signed sum of the gaps between runs: the parent's own code
        self.offset = 0
        self.waiting: dict[str, int] = {}  # path -> absolute index of its last run's start

    def low(self, first: int, last: int) -> int:
        """The lowest level between two absolute indices, both included."""
        return min(self.levels[first - self.offset:last - self.offset + 1])


class CycleAttribution:
    """Feeds every path's :class:`RunSeries` from finished runs, given in the order they end."""

    def __init__(self, max_paths: int = 4096, max_points: int = 8192) -> None:
        self.series: dict[str, RunSeries] = {}
        self.max_paths = max_paths
        self.max_points = max_points
        self.dropped_paths = 0
        self._streams: dict[str, _Stream] = {}

    def add(self, run: FinishedRun) -> None:
        parent = run.path.rpartition(PATH_SEPARATOR)[0] or _ROOT + run.path
        parent = f"{run.stream}\0{parent}"
        stream = self._streams.get(parent)
        series = self.series.get(run.path)
        if (series is None and len(self.series) >= self.max_paths) or (
                stream is None and len(self._streams) >= self.max_paths):
            self.dropped_paths += 1
            return
        if series is None:
            series = self.series[run.path] = RunSeries()
        if stream is None:
            stream = self._streams[parent] = _Stream()
        series.add_level(run.start, run.end, run.peak_added)
        start_at = stream.offset + len(stream.levels)
        if stream.last_end is not None:
            stream.gaps += run.start - stream.last_end
        stream.last_end = run.end
        parents_own = max(0, stream.gaps)
        stream.levels += (run.start - parents_own, run.end - parents_own)
        previous = stream.waiting.get(run.path)
        stream.waiting[run.path] = start_at
        if previous is not None:
            self._resolve(stream, run.path, previous, start_at + 1, complete=True)
        if len(stream.levels) > self.max_points:
            self._trim(stream, force=True)

    def finish(self) -> None:
        """Attribute every waiting run with the look-ahead left in its stream."""
        for stream in self._streams.values():
            last = stream.offset + len(stream.levels) - 1
            for path, start_at in sorted(stream.waiting.items(), key=lambda item: item[1]):
                self._resolve(stream, path, start_at, last, complete=False)
            stream.waiting.clear()
            stream.levels.clear()

    def _resolve(self, stream: _Stream, path: str, start_at: int, through: int,
                 complete: bool) -> None:
        # two windows of one cycle each, the second one point later: the baseline after the
        # run (from its end to the next run's end) less the baseline before it (from its
        # start to the next run's start). Signed, and unbiased under noise that does not
        # trend: a baseline taken as min(start, after) would make every run retain >= 0
        # and stationary noise pile up as held memory, run after run. Without a next run
        # (``complete`` false: the stream ended or is full) both windows run to the last
        # point, so a cut-off cycle is not read as a release.
        after = stream.low(start_at + 1, through)
        before = stream.low(start_at, through if not complete else max(start_at, through - 1))
        series = self.series.get(path)
        if series is not None:
            series.add_retained(after - before)
        if stream.waiting.get(path) == start_at:
            del stream.waiting[path]
        self._trim(stream, force=False)

    def _trim(self, stream: _Stream, force: bool) -> None:
        """Drop points no waiting run needs; when ``force``, first attribute the oldest."""
        if force and stream.waiting:
            path, start_at = min(stream.waiting.items(), key=lambda item: item[1])
            self._resolve(stream, path, start_at, stream.offset + len(stream.levels) - 1,
                          complete=False)
            return
        keep_from = min(stream.waiting.values(), default=stream.offset + len(stream.levels))
        drop = keep_from - stream.offset
        if drop > 0:
            del stream.levels[:drop]
            stream.offset = keep_from


def judged_alone(runs: list[tuple[int, int]], peaks_added: list[int | None] | None = None
                 ) -> RunSeries:
    """The series of one path whose runs ``(start, end)`` have no parent phase, finished."""
    attribution = CycleAttribution()
    for index, (start, end) in enumerate(runs):
        added = peaks_added[index] if peaks_added is not None else None
        attribution.add(FinishedRun("alone", start, end, added))
    attribution.finish()
    return attribution.series.get("alone") or RunSeries()
