"""The OOM flight recorder: classification, ring buffer, dump bundles, breadcrumbs."""

from memspan.oom.classify import OOMExceptionClassification, OOMKind, classify_oom_exception
from memspan.oom.recorder import OOMFlightRecorder, OOMFlightRecorderConfig

__all__ = [
    "OOMExceptionClassification",
    "OOMFlightRecorder",
    "OOMFlightRecorderConfig",
    "OOMKind",
    "classify_oom_exception",
]
