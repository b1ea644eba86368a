"""Leak and plateau verdicts over repeated runs of a phase path."""

from memspan.analysis.thresholds import LeakThresholds
from memspan.analysis.verdicts import RunSeries, Verdict, verdict_for

__all__ = ["LeakThresholds", "RunSeries", "Verdict", "verdict_for"]
