"""The self-contained HTML audit report (one session per page) and its JSON sidecar."""

from memspan.report.builder import ReportResult, build_report, generate_report, list_sessions
from memspan.report.lines import InputError

__all__ = ["InputError", "ReportResult", "build_report", "generate_report", "list_sessions"]
