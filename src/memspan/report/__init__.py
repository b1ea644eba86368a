"""The self-contained HTML audit report and its JSON sidecar."""

from memspan.report.builder import ReportResult, build_report

__all__ = ["ReportResult", "build_report"]
