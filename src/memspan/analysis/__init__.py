"""Leak and plateau verdicts over repeated runs of a phase path."""

from memspan.analysis.attribution import CycleAttribution, FinishedRun
from memspan.analysis.run_series import RunSeries
from memspan.analysis.thresholds import LeakThresholds
from memspan.analysis.verdicts import Verdict, judge_paths, verdict_for

__all__ = ["CycleAttribution", "FinishedRun", "LeakThresholds", "RunSeries", "Verdict",
           "judge_paths", "verdict_for"]
