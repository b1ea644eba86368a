"""Enforcing ``memspan run --memory-limit``: a cgroup v2 child group with ``memory.max``.

``--memory-limit SIZE`` is a promise that the child cannot use more than SIZE, so memspan
either keeps it or refuses to start the child:

1. find this process's cgroup v2 directory (the ``0::/path`` line of ``/proc/self/cgroup``,
   under ``/sys/fs/cgroup`` or the hybrid ``/sys/fs/cgroup/unified``);
2. check that the ``memory`` controller is available there (``cgroup.controllers``);
3. create ``memspan-run-<pid>`` under it (``0700``), enable ``memory`` for it in the
   parent's ``cgroup.subtree_control`` if needed, write ``memory.max`` (and
   ``memory.swap.max = 0`` where it exists, so the limit is not softened by swap);
4. the child moves itself into the group before ``exec`` (it writes ``0`` to
   ``cgroup.procs``), so nothing it allocates is outside the limit.

Any step that fails raises :class:`MemoryLimitError` with the reason (no cgroup v2, memory
controller not delegated, read-only ``/sys/fs/cgroup``, the no-internal-processes rule) and
``memspan run`` exits 2 without starting the child. ``--compare-limit SIZE`` is the
non-enforcing alternative: it is only compared with the peak in the summary.

The group's ``memory.events`` ``oom_kill`` counter is the run's cgroup evidence; the group is
removed after the run (a group still holding a grandchild is left, with a warning).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GROUP_PREFIX = "memspan-run-"


class MemoryLimitError(Exception):
    """``--memory-limit`` cannot be enforced on this machine; the message says why."""


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(65536)
    except (OSError, UnicodeDecodeError):
        return None


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as handle:
        handle.write(text)


def cgroup_v2_directory(proc_root: str = "/proc", sys_root: str = "/sys") -> str:
    """This process's cgroup v2 directory, or :class:`MemoryLimitError`."""
    text = _read(os.path.join(proc_root, "self", "cgroup"))
    if text is None:
        raise MemoryLimitError(f"cannot read {os.path.join(proc_root, 'self', 'cgroup')}")
    path = None
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, cgroup_path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            path = cgroup_path
    if path is None:
        raise MemoryLimitError("this machine has no cgroup v2 hierarchy")
    mount = os.path.join(sys_root, "fs", "cgroup")
    for root in (mount, os.path.join(mount, "unified")):
        if os.path.exists(os.path.join(root, "cgroup.controllers")):
            return os.path.normpath(root + "/" + path.strip("/"))
    raise MemoryLimitError(f"no cgroup v2 hierarchy mounted at {mount}")


@dataclass
class LimitGroup:
    """A cgroup v2 group holding the child, limited to ``limit_bytes``."""

    path: str
    limit_bytes: int

    @property
    def procs_file(self) -> str:
        return os.path.join(self.path, "cgroup.procs")

    def join(self) -> None:
        """Move the calling process into the group (run in the child before ``exec``)."""
        _write(self.procs_file, "0")

    def oom_kills(self) -> int | None:
        text = _read(os.path.join(self.path, "memory.events"))
        for line in (text or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and value.strip().isdigit():
                return int(value)
        return None

    def peak_bytes(self) -> int | None:
        text = (_read(os.path.join(self.path, "memory.peak")) or "").strip()
        return int(text) if text.isdigit() else None

    def remove(self) -> str | None:
        """Remove the group; a warning (str) when it cannot be removed yet."""
        try:
            os.rmdir(self.path)
        except FileNotFoundError:
            return None
        except OSError as error:
            return f"cgroup {self.path} not removed: {error.strerror}"
        return None


def create_limit_group(limit_bytes: int, *, proc_root: str = "/proc",
                       sys_root: str = "/sys") -> LimitGroup:
    """Create the limited group (see the module docstring) or raise :class:`MemoryLimitError`."""
    if limit_bytes <= 0:
        raise MemoryLimitError(f"the limit must be positive, got {limit_bytes}")
    parent = cgroup_v2_directory(proc_root, sys_root)
    available = (_read(os.path.join(parent, "cgroup.controllers")) or "").split()
    if "memory" not in available:
        raise MemoryLimitError(f"the cgroup v2 memory controller is not available in {parent} "
                               f"(controllers: {' '.join(available) or 'none'})")
    group = os.path.join(parent, f"{GROUP_PREFIX}{os.getpid()}")
    try:
        os.mkdir(group, 0o700)
    except FileExistsError:
        pass
    except OSError as error:
        raise MemoryLimitError(f"cannot create the cgroup {group}: {error.strerror}") from None
    try:
        enabled = (_read(os.path.join(group, "cgroup.controllers")) or "").split()
        if "memory" not in enabled:
            try:
                _write(os.path.join(parent, "cgroup.subtree_control"), "+memory")
            except OSError as error:
                raise MemoryLimitError(
                    f"cannot enable the memory controller for child groups of {parent}: "
                    f"{error.strerror} (cgroup v2 allows it only in a group without processes "
                    "of its own; run memspan in a delegated, empty group)") from None
        try:
            _write(os.path.join(group, "memory.max"), str(limit_bytes))
        except OSError as error:
            raise MemoryLimitError(f"cannot write {group}/memory.max: {error.strerror}") from None
        if os.path.exists(os.path.join(group, "memory.swap.max")):
            try:
                _write(os.path.join(group, "memory.swap.max"), "0")
            except OSError:
                pass
    except MemoryLimitError:
        try:
            os.rmdir(group)
        except OSError:
            pass
        raise
    return LimitGroup(group, limit_bytes)
