"""Why a child process died, from what survives it: the exit status, the cgroup's OOM-kill
counter, the tail of its output, and its peak memory against its limit.

Rules:

- Exit ``-9`` (``subprocess``) or ``137`` (a shell's 128 + 9) means SIGKILL. It is an
  ``oom_killed`` exit, *confirmed* when the cgroup ``oom_kill`` counter rose during the run,
  *likely* otherwise (the kernel OOM killer is the usual sender of an unexpected SIGKILL).
- Without SIGKILL, a rise of the counter is a *possible* OOM kill (of a process in the same
  cgroup), and so are the seed's four text markers in the output tail of a failed exit:
  ``out of memory``, ``oom``, ``killed`` and ``signal 9``, case-insensitive and matched as
  whole words (``oom-kill``, ``OOMKilled``, ``oom_kill``, ``OOM-killer`` are forms of
  ``oom``; ``CUDA OOM error`` matches, ``Zoom``, ``bedroom`` and ``skilled`` never do).
  Exit 139 (SIGSEGV) is a crash, not an OOM.
- Suggestion: when the peak reached at least 95 % of the limit, raise the limit to 150 % of
  it; when the peak is unknown but a limit is known, the same figure as something to consider.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from memspan.launcher.sizes import format_mib

SIGKILL_CODES = frozenset({-9, 137})
_MARKERS = (
    ("out of memory", re.compile(r"\bout[\s_-]+of[\s_-]+memory\b", re.IGNORECASE)),
    ("oom", re.compile(r"\boom(?:[\s_-]?kill(?:ed|er|s)?)?\b", re.IGNORECASE)),
    ("killed", re.compile(r"\bkilled\b", re.IGNORECASE)),
    ("signal 9", re.compile(r"\bsignal:?\s*9\b", re.IGNORECASE)),
)
NEAR_LIMIT = 0.95
HEADROOM = 1.5


@dataclass(frozen=True)
class ProcessExitClassification:
    exit_code: int
    is_oom: bool
    kind: str | None
    confidence: str | None  # "confirmed" | "likely" | "possible"
    reason: str
    markers: tuple[str, ...] = ()
    peak_bytes: int | None = None
    limit_bytes: int | None = None
    suggested_limit_bytes: int | None = None
    suggestion: str | None = None


def find_markers(text: str) -> tuple[str, ...]:
    return tuple(label for label, pattern in _MARKERS if pattern.search(text))


def suggest(peak_bytes: int | None, limit_bytes: int | None) -> tuple[int | None, str | None]:
    if limit_bytes is None or limit_bytes <= 0:
        return None, None
    target = int(limit_bytes * HEADROOM)
    if peak_bytes is not None:
        if peak_bytes >= NEAR_LIMIT * limit_bytes:
            return target, (f"peak {format_mib(peak_bytes)} reached "
                            f"{peak_bytes / limit_bytes:.0%} of the {format_mib(limit_bytes)} "
                            f"limit: raise the limit to {format_mib(target)}")
        return None, None
    return target, (f"peak unknown; consider raising the {format_mib(limit_bytes)} limit "
                    f"to {format_mib(target)}")


def classify_process_exit(
    exit_code: int,
    *,
    oom_kills_before: int | None = None,
    oom_kills_after: int | None = None,
    output_tail: str = "",
    peak_bytes: int | None = None,
    limit_bytes: int | None = None,
) -> ProcessExitClassification:
    """Classify a finished child (see the module docstring for the rules)."""
    if peak_bytes is not None and peak_bytes < 0:
        raise ValueError(f"peak_bytes must be >= 0, got {peak_bytes}")
    if limit_bytes is not None and limit_bytes < 0:
        raise ValueError(f"limit_bytes must be >= 0, got {limit_bytes}")
    rose = (oom_kills_before is not None and oom_kills_after is not None
            and oom_kills_after > oom_kills_before)
    markers = find_markers(output_tail) if exit_code != 0 else ()
    target, text = suggest(peak_bytes, limit_bytes)
    common = {"exit_code": exit_code, "markers": markers, "peak_bytes": peak_bytes,
              "limit_bytes": limit_bytes}
    if exit_code in SIGKILL_CODES:
        confidence = "confirmed" if rose else "likely"
        reason = "cgroup:oom_kill" if rose else f"exit_code:{exit_code}"
        return ProcessExitClassification(is_oom=True, kind="oom_killed", confidence=confidence,
                                         reason=reason, suggested_limit_bytes=target,
                                         suggestion=text, **common)  # type: ignore[arg-type]
    if exit_code != 0 and (rose or markers):
        reason = "cgroup:oom_kill" if rose else f"text_marker:{markers[0]}"
        return ProcessExitClassification(is_oom=True, kind="oom_killed", confidence="possible",
                                         reason=reason, suggested_limit_bytes=target,
                                         suggestion=text, **common)  # type: ignore[arg-type]
    return ProcessExitClassification(is_oom=False, kind=None, confidence=None,
                                     reason=f"exit_code:{exit_code}", **common)  # type: ignore[arg-type]
