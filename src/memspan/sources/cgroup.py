"""Memory of the cgroup this process runs in: usage, limit, and the kernel's OOM kills.

Handles cgroup v2, v1, and hybrid hosts (v2 mounted but the memory controller on v1),
which is what ``/proc/self/cgroup`` decides: a v1 line naming the ``memory`` controller
wins, otherwise the v2 ``0::`` line is used. When the listed path does not exist under the
mount (a container with its own cgroup namespace), the mount root is used instead.

A limit of "max" (v2) or a page-rounded 2**63 (v1) means unlimited, and the limit figure is
then absent. Unreadable or malformed files make that figure absent, never zero.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memspan import names
from memspan.metric_catalogue import BYTES, ONE, Cadence, InstrumentKind, MetricRow
from memspan.names import EventType
from memspan.sources.base import DeviceIdentity, Reading, SourceStatus

_UNLIMITED_THRESHOLD = 1 << 62


@dataclass(frozen=True, slots=True)
class CgroupLayout:
    """Where this process's memory cgroup files are, and which version they follow."""

    version: int
    directory: str

    @property
    def usage_file(self) -> str:
        return "memory.current" if self.version == 2 else "memory.usage_in_bytes"

    @property
    def limit_file(self) -> str:
        return "memory.max" if self.version == 2 else "memory.limit_in_bytes"

    @property
    def events_file(self) -> str:
        return "memory.events" if self.version == 2 else "memory.oom_control"


@dataclass(frozen=True, slots=True)
class CgroupReading:
    usage_bytes: int | None
    limit_bytes: int | None
    oom_kills: int | None


def detect_layout(proc_root: str = "/proc", sys_root: str = "/sys") -> CgroupLayout | None:
    """Find the memory cgroup of the current process, or None when there is none."""
    try:
        with open(os.path.join(proc_root, "self", "cgroup"), encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    mount = os.path.join(sys_root, "fs", "cgroup")
    v2_path: str | None = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            return _existing(CgroupLayout(1, os.path.join(mount, "memory") + path),
                             CgroupLayout(1, os.path.join(mount, "memory")))
    if v2_path is not None:
        root = mount
        if not os.path.exists(os.path.join(root, "cgroup.controllers")):
            unified = os.path.join(mount, "unified")
            if os.path.exists(os.path.join(unified, "cgroup.controllers")):
                root = unified
        return _existing(CgroupLayout(2, root + v2_path.rstrip("/")), CgroupLayout(2, root))
    return None


def _existing(preferred: CgroupLayout, fallback: CgroupLayout) -> CgroupLayout | None:
    for layout in (preferred, fallback):
        if os.path.exists(os.path.join(layout.directory, layout.usage_file)):
            return layout
    return None


def read_cgroup(layout: CgroupLayout) -> CgroupReading:
    """Read usage, limit and the oom_kill counter; anything unreadable is None."""
    usage = _read_int(os.path.join(layout.directory, layout.usage_file))
    limit_text = _read_text(os.path.join(layout.directory, layout.limit_file))
    limit: int | None = None
    if limit_text is not None and limit_text != "max":
        try:
            value = int(limit_text)
        except ValueError:
            value = -1
        if 0 <= value < _UNLIMITED_THRESHOLD:
            limit = value
    oom_kills = None
    events = _read_text(os.path.join(layout.directory, layout.events_file))
    if events is not None:
        for line in events.splitlines():
            key, _, value_text = line.partition(" ")
            if key == "oom_kill" and value_text.strip().isdigit():
                oom_kills = int(value_text)
    return CgroupReading(usage, limit, oom_kills)


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _read_int(path: str) -> int | None:
    text = _read_text(path)
    if text is None or not text.isdigit():
        return None
    return int(text)


class CgroupMemorySource:
    """Cgroup memory usage, limit (when set) and OOM-kill count."""

    name = "cgroup"
    cadence: Cadence = Cadence.FAST
    metrics: tuple[MetricRow, ...] = (
        MetricRow(names.CGROUP_MEMORY_USAGE, InstrumentKind.UP_DOWN_COUNTER, BYTES,
                  "Memory charged to this process's cgroup"),
        MetricRow(names.CGROUP_MEMORY_LIMIT, InstrumentKind.UP_DOWN_COUNTER, BYTES,
                  "Memory limit of this process's cgroup"),
        MetricRow(names.CGROUP_OOM_KILLS, InstrumentKind.COUNTER, ONE,
                  "Processes the kernel OOM-killed in this cgroup",
                  counter_event=EventType.CGROUP_OOM_KILL),
    )

    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys") -> None:
        self._proc_root = proc_root
        self._sys_root = sys_root
        self._layout = detect_layout(proc_root, sys_root)

    @property
    def layout(self) -> CgroupLayout | None:
        return self._layout

    def probe(self) -> SourceStatus:
        if self._layout is None:
            return SourceStatus(False, "no memory cgroup found for this process")
        return SourceStatus(True, f"cgroup v{self._layout.version} at {self._layout.directory}")

    def devices(self) -> Sequence[DeviceIdentity]:
        return ()

    def capabilities(self) -> frozenset[str]:
        return frozenset(
            {names.CGROUP_MEMORY_USAGE, names.CGROUP_MEMORY_LIMIT, names.CGROUP_OOM_KILLS}
        )

    def read(self) -> CgroupReading | None:
        return None if self._layout is None else read_cgroup(self._layout)

    def sample(self) -> Sequence[Reading]:
        reading = self.read()
        if reading is None:
            return ()
        out = []
        if reading.usage_bytes is not None:
            out.append(Reading(names.CGROUP_MEMORY_USAGE, reading.usage_bytes))
        if reading.limit_bytes is not None:
            out.append(Reading(names.CGROUP_MEMORY_LIMIT, reading.limit_bytes))
        if reading.oom_kills is not None:
            out.append(Reading(names.CGROUP_OOM_KILLS, reading.oom_kills))
        return out

    def snapshot(self) -> dict[str, Any]:
        reading = self.read()
        if reading is None or self._layout is None:
            return {"available": False}
        return {
            "available": True,
            "version": self._layout.version,
            "directory": self._layout.directory,
            "usage_bytes": reading.usage_bytes,
            "limit_bytes": reading.limit_bytes,
            "oom_kills": reading.oom_kills,
        }

    def after_fork(self) -> None:
        """A forked child shares the parent's cgroup; nothing is held open."""

    def close(self) -> None:
        """Nothing is held open."""
