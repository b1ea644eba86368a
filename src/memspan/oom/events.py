"""The vocabulary of flight-recorder events (the ``type`` field of every ring event)."""

from __future__ import annotations

from enum import Enum


class EventType(str, Enum):
    PHASE_START = "phase_start"
    PHASE_END = "phase_end"
    SAMPLE = "sample"
    ALLOC_RETRY = "allocator_retry"
    ALLOCATOR_OOM = "allocator_oom"
    CGROUP_OOM_KILL = "cgroup_oom_kill"
    OOM = "oom"
    USER = "user"

