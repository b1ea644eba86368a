"""What one phase path's runs say about memory that stays, in bounded memory.

Two figures per run, kept apart because they answer different questions:

- the *level* at the run's end (memory in use: allocator bytes on a device, RSS less the C
  allocator's free bytes on a host): compared across runs at the same point of the cycle, it
  says whether memory that stays keeps rising;
- the *retained* bytes of the run: how far the path's run raised the retained baseline of its
  parent's cycle (see :mod:`memspan.analysis.attribution`), net of what siblings release.
  Retained values telescope: over all runs they add up to how much the baseline rose across
  the path's own runs, so allocations freed by a sibling (activations) or by the next cycle
  (gradients freed by the next ``zero_grad``) cancel instead of piling up.

Invariant: memory is O(:data:`MAX_SAMPLES`) per path whatever the run count. Sums are exact;
the samples used after warm-up (the first tenth of the runs) are thinned by halves when full,
so warm-up boundaries and fits are exact up to 2,048 runs and close beyond.
"""

from __future__ import annotations

import math

#: samples kept per series before thinning by half
MAX_SAMPLES = 2048


class _Samples:
    """(run index, value) pairs, every one up to MAX_SAMPLES, then thinned evenly."""

    __slots__ = ("points", "stride")

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []
        self.stride = 1

    def add(self, index: int, value: float) -> None:
        if index % self.stride:
            return
        self.points.append((index, value))
        if len(self.points) >= MAX_SAMPLES:
            self.stride *= 2
            self.points = [p for p in self.points if p[0] % self.stride == 0]

    def before(self, index: int) -> float:
        """The value of the last sample whose index is below ``index`` (0.0 if none)."""
        best = 0.0
        for at, value in self.points:
            if at >= index:
                break
            best = value
        return best


class RunSeries:
    """The evidence of one path: end levels, retained bytes, working memory, the process."""

    __slots__ = ("_last_retained", "_levels", "_retained_cum", "_retained_lag_cum",
                 "_retained_sq_cum", "held", "last_end", "n", "n_retained", "retained_lag",
                 "retained_sq", "working", "working_known")

    def __init__(self) -> None:
        self.n = 0
        self.n_retained = 0
        self.held = 0  # signed sum of the retained bytes of every attributed run
        self.retained_sq = 0.0
        self.retained_lag = 0.0  # sum of each retained value times the one before it
        self._last_retained: float | None = None
        self.working = 0
        self.working_known = False
        self.last_end: int | None = None
        self._levels = _Samples()
        self._retained_cum = _Samples()
        self._retained_sq_cum = _Samples()
        self._retained_lag_cum = _Samples()

    # -- feeding ------------------------------------------------------------------------
    def add_level(self, start: int, end: int, peak_added: int | None) -> None:
        """One run's figures: its start and end level, and the most it added at its peak
        above its start when known exactly (``None`` otherwise)."""
        self._levels.add(self.n, float(end))
        self.n += 1
        self.last_end = end
        if peak_added is not None:
            self.working = max(self.working, peak_added)
            self.working_known = True
        self.working = max(self.working, end - start)

    def add_retained(self, retained: int) -> None:
        """One run's retained bytes (in run order; may lag its level by one cycle)."""
        self.held += retained
        self.retained_sq += float(retained) * float(retained)
        if self._last_retained is not None:
            self.retained_lag += self._last_retained * float(retained)
        self._last_retained = float(retained)
        self.n_retained += 1
        self._retained_cum.add(self.n_retained, float(self.held))
        self._retained_sq_cum.add(self.n_retained, self.retained_sq)
        self._retained_lag_cum.add(self.n_retained, self.retained_lag)

    # -- reading ------------------------------------------------------------------------
    def warm_up(self) -> int:
        """Runs left out of growth judgements: the first tenth."""
        return self.n // 10

    def level_fit(self) -> tuple[float, float]:
        """(slope in bytes per run, R²) of the end level after warm-up; (0, 0) if < 3 runs."""
        first = self.warm_up()
        points = [(x, y) for x, y in self._levels.points if x >= first]
        n = len(points)
        if n < 3:
            return 0.0, 0.0
        mx = sum(x for x, _ in points) / n
        my = sum(y for _, y in points) / n
        sxx = sum((x - mx) ** 2 for x, _ in points)
        syy = sum((y - my) ** 2 for _, y in points)
        sxy = sum((x - mx) * (y - my) for x, y in points)
        if sxx <= 0:
            return 0.0, 0.0
        slope = sxy / sxx
        r2 = sxy * sxy / (sxx * syy) if syy > 1e-9 * max(1.0, my * my) else 0.0
        return slope, min(1.0, max(0.0, r2))

    def retained_after_warm_up(self) -> tuple[float, float, int]:
        """(mean retained per run, its t statistic, runs) over the attributed runs after
        warm-up. The t statistic is inf when every run retained the same positive amount.

        Neighbouring runs' retained bytes are correlated (their look-ahead windows overlap:
        one run's rise is the next one's fall), so the standard error counts the lag-1
        autocovariance when it is positive; with independent terms a random walk of levels
        would pass for a drift about one time in thirty."""
        first = self.warm_up()
        runs = self.n_retained - first
        if runs < 2:
            return 0.0, 0.0, max(0, runs)
        total = self.held - self._retained_cum.before(first + 1)
        squares = self.retained_sq - self._retained_sq_cum.before(first + 1)
        lagged = self.retained_lag - self._retained_lag_cum.before(first + 1)
        mean = total / runs
        variance = max(0.0, (squares - runs * mean * mean) / (runs - 1))
        lag_covariance = (lagged - (runs - 1) * mean * mean) / (runs - 1)
        variance += 2 * max(0.0, lag_covariance)
        if variance <= 1e-9 * max(1.0, mean * mean):
            return mean, (math.inf if mean > 0 else 0.0), runs
        return mean, mean / math.sqrt(variance / runs), runs
