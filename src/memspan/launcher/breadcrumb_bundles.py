"""Turn breadcrumb files left by dead processes into ordinary dump bundles, on evidence.

Rules (``memspan run`` calls :func:`collect_breadcrumbs` after its child ended):

- ``.breadcrumbs`` is opened as a checked directory (a real directory owned by the current
  user, never through a symlink): one that is not is refused with a warning and nothing in
  it is read or deleted. Files are read with ``O_NOFOLLOW``, only if regular, with a size
  bound (:func:`memspan.oom.breadcrumbs.read_breadcrumb`), and deleted relative to the
  directory descriptor.
- A breadcrumb whose process is still alive is left alone.
- A breadcrumb from before this run (header ``started_at``, else the file's mtime, older
  than the run's start) is **stale**: reported, never charged to this run, left in place.
- A breadcrumb of this run becomes a bundle only with evidence that its process died
  abnormally: the child itself was killed by a signal (or, through a shell, reports 128+N),
  or the cgroup's ``oom_kill`` counter rose during the run. Without evidence (a
  ``multiprocessing`` worker terminated by its pool, say) it is discarded and counted: it
  must not take a ``max_dumps`` slot from a real OOM bundle.
- A corrupt or partial file (a line cut by the SIGKILL, garbage) still becomes a bundle:
  unreadable lines are skipped and counted in the bundle's metadata. The breadcrumb is
  removed only once its bundle exists.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import signal
import stat
import time
from datetime import datetime, timezone
from typing import Any

from memspan import names
from memspan.launcher.exit_classify import ProcessExitClassification
from memspan.names import EventType
from memspan.oom.breadcrumbs import DIRECTORY, read_breadcrumb
from memspan.oom.bundle import BundleContent, bundle_name, write_bundle
from memspan.oom.recorder import environment_report
from memspan.oom.retention import prune
from memspan.safe_files import UnsafePathError, check_directory, unlink_in

_NAME = re.compile(r"^r(\d{1,9})_p(\d{1,9})\.jsonl$")
_TEMPORARY = re.compile(r"^\.r(\d{1,9})_p(\d{1,9})\.jsonl\.[0-9a-f]+\.tmp$")
#: Bytes of the child's output tail kept in a bundle's metadata (per stream).
OUTPUT_EXCERPT_BYTES = 8 << 10
_RSS_KEYS = ("rss", "rss_peak")
_RSS_SAMPLE_PREFIXES = (names.PROCESS_MEMORY_USAGE, names.PROCESS_MEMORY_WINDOW_PEAK)


@dataclasses.dataclass
class BreadcrumbOutcome:
    """What became of the breadcrumbs found after a run."""

    bundles: list[str] = dataclasses.field(default_factory=list)
    stale: list[str] = dataclasses.field(default_factory=list)
    discarded: int = 0
    skipped: int = 0
    refused: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    peak_rss_bytes: int | None = None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            return handle.read(4096).rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def signalled(exit_code: int) -> bool:
    """The child died of a signal (``-N``), or a shell child reports one (``128 + N``)."""
    if exit_code < 0:
        return True
    return 128 < exit_code <= 128 + 64 and (exit_code - 128) in signal.valid_signals()


def open_phases(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Replay phase boundaries: the phases still open when the events stop.

    The flight recorder's :func:`memspan.oom.service.phase_stack` answers the same question
    for a live process by walking the open phases' parent links (exact, with thread and user
    attributes); a SIGKILLed child leaves only its breadcrumb events, so here the stack is
    rebuilt from ``phase_start``/``phase_end`` events (phases whose start was evicted from the
    ring are missing). The entries share the keys ``name``, ``path`` and ``scope_id``.
    """
    stack: list[dict[str, Any]] = []
    for event in events:
        kind = event.get("type")
        if kind == EventType.PHASE_START.value:
            stack.append({"path": event.get("path"), "scope_id": event.get("scope_id"),
                          "name": str(event.get("path", "")).rsplit(names.PATH_SEPARATOR, 1)[-1]})
        elif kind == EventType.PHASE_END.value:
            scope = event.get("scope_id")
            for index in range(len(stack) - 1, -1, -1):
                if stack[index]["scope_id"] == scope:
                    del stack[index:]
                    break
    return stack


def highest_rss(events: list[dict[str, Any]]) -> int | None:
    """The highest RSS figure the events carry (phase figures and sampled RSS)."""
    best: int | None = None
    for event in events:
        figures: list[Any] = [event.get(key) for key in _RSS_KEYS]
        values = event.get("values")
        if isinstance(values, dict):
            figures.extend(v for k, v in values.items()
                           if isinstance(k, str) and k.startswith(_RSS_SAMPLE_PREFIXES))
        for figure in figures:
            if type(figure) is int and figure >= 0 and (best is None or figure > best):
                best = figure
    return best


def _started_at(header: dict[str, Any] | None, mtime: float) -> float:
    value = (header or {}).get("started_at")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
        return float(value)
    return mtime


def collect_breadcrumbs(dump_dir: str, classification: ProcessExitClassification, *,
                        run_started: float, child_pid: int, cgroup_oom_rose: bool,
                        output_excerpt: dict[str, str] | None = None,
                        max_dumps: int, max_total_mb: int) -> BreadcrumbOutcome:
    """Apply the module docstring's rules to ``<dump_dir>/.breadcrumbs``."""
    outcome = BreadcrumbOutcome()
    directory = os.path.join(dump_dir, DIRECTORY)
    try:
        check_directory(directory, own_name=True)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return outcome
    except UnsafePathError as error:
        outcome.refused.append(f"{directory} {error.strerror}")
        return outcome
    except OSError as error:
        outcome.warnings.append(f"cannot read {directory}: {error.strerror}")
        return outcome
    try:
        _collect(dir_fd, dump_dir, classification, outcome, run_started=run_started,
                 child_pid=child_pid, cgroup_oom_rose=cgroup_oom_rose,
                 output_excerpt=output_excerpt or {})
    finally:
        os.close(dir_fd)
    if outcome.bundles:
        prune(dump_dir, max_dumps=max_dumps, max_total_bytes=max_total_mb * 1024 * 1024,
              keep=outcome.bundles[-1])
    return outcome


def _collect(dir_fd: int, dump_dir: str, classification: ProcessExitClassification,
             outcome: BreadcrumbOutcome, *, run_started: float, child_pid: int,
             cgroup_oom_rose: bool, output_excerpt: dict[str, str]) -> None:
    names = sorted(os.listdir(dir_fd))[:10_000]
    for name in names:
        temporary = _TEMPORARY.match(name)
        if temporary is not None and not _alive(int(temporary.group(2))):
            try:
                unlink_in(dir_fd, name)  # a rewrite cut short by the kill
            except OSError:
                pass
            continue
        match = _NAME.match(name)
        if match is None:
            continue
        rank, pid = int(match.group(1)), int(match.group(2))
        if _alive(pid):
            continue
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                raise UnsafePathError(errno.ELOOP, "is a symlink (refused, never followed)", name)
            if not stat.S_ISREG(info.st_mode):
                raise UnsafePathError(errno.EINVAL, "is not a regular file (refused)", name)
            header, events, bad_lines = read_breadcrumb(name, dir_fd=dir_fd)
        except UnsafePathError as error:
            outcome.refused.append(f"{os.path.join(dump_dir, DIRECTORY, name)} {error.strerror}")
            continue
        except OSError:
            outcome.skipped += 1
            continue
        started = _started_at(header, info.st_mtime)
        if started < run_started:
            outcome.stale.append(os.path.join(dump_dir, DIRECTORY, name))
            continue
        rss = highest_rss(events)
        if rss is not None and (outcome.peak_rss_bytes is None or rss > outcome.peak_rss_bytes):
            outcome.peak_rss_bytes = rss
        evidence = ("cgroup oom_kill counter rose during the run" if cgroup_oom_rose else
                    "the child was killed by a signal" if signalled(classification.exit_code)
                    else None)
        if evidence is None:
            outcome.discarded += 1
            _remove(dir_fd, name, outcome)
            continue
        path = _write(dump_dir, name, rank, pid, header, events, bad_lines, classification,
                      evidence, child_pid, output_excerpt, outcome)
        if path is not None:
            outcome.bundles.append(path)
            _remove(dir_fd, name, outcome)


def _remove(dir_fd: int, name: str, outcome: BreadcrumbOutcome) -> None:
    try:
        unlink_in(dir_fd, name)
    except OSError as error:
        outcome.warnings.append(f"cannot remove breadcrumb {name}: {error.strerror}")


def _write(dump_dir: str, name: str, rank: int, pid: int, header: dict[str, Any] | None,
           events: list[dict[str, Any]], bad_lines: int,
           classification: ProcessExitClassification, evidence: str, child_pid: int,
           output_excerpt: dict[str, str], outcome: BreadcrumbOutcome) -> str | None:
    stack = open_phases(events)
    samples = [e for e in events if e.get("type") == "sample"]
    session = (header or {}).get("session_id")
    manifest = {
        "created_at_utc": datetime.now(timezone.utc).isoformat(),
        "reason": classification.reason,
        "kind": classification.kind or "crash",
        "backend": "process",
        "trace_id": None,
        "span_id": None,
        "phase_path": stack[-1]["path"] if stack else None,
        "scope_id": stack[-1]["scope_id"] if stack else None,
        "session_id": session if isinstance(session, str) else None,
        "rank": rank,
        "pid": pid,
        "source": "breadcrumb",
    }
    content = BundleContent(
        manifest=manifest,
        metadata={"exit": dataclasses.asdict(classification), "breadcrumb_header": header,
                  "corrupt_lines": bad_lines, "context": "process exit",
                  "evidence": evidence, "child_pid": child_pid,
                  "is_child": pid == child_pid,
                  "output_tail": {k: v[-OUTPUT_EXCERPT_BYTES:] for k, v in output_excerpt.items()}},
        phases=stack,
        memory={"last_sample": samples[-1] if samples else None},
        environment=environment_report(),
        traceback_text="(no traceback: the process was killed)\n",
        events=events,
    )
    try:
        return write_bundle(dump_dir, bundle_name(rank, pid, 0, now=time.time()), content)
    except (OSError, MemoryError) as error:
        outcome.warnings.append(f"bundle for {name} not written: {error}")
        return None
