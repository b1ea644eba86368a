"""``memspan run``: launch a child under auto-instrumentation and explain how it died."""

from memspan.launcher.exit_classify import ProcessExitClassification, classify_process_exit
from memspan.launcher.sizes import format_mib, parse_memory_size

__all__ = [
    "ProcessExitClassification",
    "classify_process_exit",
    "format_mib",
    "parse_memory_size",
]
