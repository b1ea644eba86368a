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
from memspan.oom.breadcrumb_stack import (
    MAX_READ_BYTES as MAX_STACK_BYTES,
)
from memspan.oom.breadcrumb_stack import (
    OpenStack,
    parse_open_stack,
    stack_name,
)
from memspan.oom.breadcrumbs import DIRECTORY, read_breadcrumb
from memspan.oom.bundle import BundleContent, bundle_name, write_bundle
from memspan.oom.recorder import environment_report
from memspan.oom.retention import prune
from memspan.safe_files import UnsafePathError, check_directory, read_regular_file, unlink_in

_NAME = re.compile(r"^r(\d{1,9})_p(\d{1,9})\.(jsonl|stack)$")
_TEMPORARY = re.compile(r"^\.r(\d{1,9})_p(\d{1,9})\.(?:jsonl|stack)\.[0-9a-f]+\.tmp$")
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


def _number(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
            and abs(value) < 1e12:
        return float(value)
    return None


def _text(value: Any, limit: int = 4096) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def _entry(record: dict[str, Any]) -> dict[str, Any]:
    """A phase stack entry from a ``phase_start`` event or an open stack-file record."""
    path = _text(record.get("path")) or ""
    name = _text(record.get("name"), 256) or path.rsplit(names.PATH_SEPARATOR, 1)[-1]
    entry: dict[str, Any] = {"name": name, "path": path, "scope_id": record.get("scope_id"),
                             "parent_scope_id": _text(record.get("parent_scope_id"), 256)}
    depth = record.get("depth")
    entry["depth"] = depth if type(depth) is int else path.count(names.PATH_SEPARATOR) + 1
    for key in ("thread_id", "thread_name"):
        if isinstance(record.get(key), (int, str)) and not isinstance(record.get(key), bool):
            entry[key] = record[key]
    start = _number(record.get("start"))
    entry["start"] = start if start is not None else _number(record.get("ts"))
    attributes = record.get("attributes")
    entry["attributes"] = dict(attributes) if isinstance(attributes, dict) else {}
    truncated = record.get("attributes_truncated")
    if type(truncated) is int and truncated > 0:
        entry["attributes_truncated"] = truncated
    return entry


def _scope(record: dict[str, Any]) -> str | None:
    scope = record.get("scope_id")
    return scope if isinstance(scope, str) and scope else None


def open_candidates(events: list[dict[str, Any]], stack: OpenStack | None = None
                    ) -> dict[str, dict[str, Any]]:
    """Every phase open when the process died, by scope id (see :func:`open_phases`)."""
    ended = {scope for e in events if e.get("type") == EventType.PHASE_END.value
             and (scope := _scope(e)) is not None}
    if stack is not None and stack.valid:
        ended.update(scope for r in stack.closed if (scope := _scope(r)) is not None)
    candidates: dict[str, dict[str, Any]] = {}
    from_events = stack is None or not stack.valid or stack.overflow > 0
    if stack is not None and stack.valid:
        for record in stack.open:
            scope = _scope(record)
            if scope is not None and scope not in ended:
                candidates[scope] = _entry(record)
    if from_events:  # no stack file, or starts it had no slot for: the ring's starts
        for event in events:
            scope = _scope(event)
            if event.get("type") == EventType.PHASE_START.value and scope is not None \
                    and scope not in ended and scope not in candidates \
                    and len(candidates) < 10_000:
                candidates[scope] = _entry(event)
    return candidates


def _parent(entry: dict[str, Any], candidates: dict[str, dict[str, Any]]
            ) -> dict[str, Any] | None:
    parent_scope = entry.get("parent_scope_id")
    if parent_scope is not None:
        return candidates.get(parent_scope)
    # an older writer's events name no parent: the latest open phase at the parent path
    # that started before this one (on the same thread when both say which)
    path = entry["path"]
    if names.PATH_SEPARATOR not in path:
        return None
    parent_path = path.rsplit(names.PATH_SEPARATOR, 1)[0]
    start = entry.get("start") or 0.0
    best = None
    for other in candidates.values():
        if other["path"] != parent_path or (other.get("start") or 0.0) > start:
            continue
        if "thread_id" in other and "thread_id" in entry \
                and other["thread_id"] != entry["thread_id"]:
            continue
        if best is None or (other.get("start") or 0.0) > (best.get("start") or 0.0):
            best = other
    return best


def open_phases(events: list[dict[str, Any]], stack: OpenStack | None = None
                ) -> list[dict[str, Any]]:
    """The stack of phases open when the process died, outermost first, rebuilt by scope id.

    Open phases are those whose start is recorded and whose end is not, wherever either
    is: the stack file's slots (written on the caller's thread at every phase edge, so they
    are exact up to the kill) and the breadcrumb events (whose ``phase_end`` events arrive
    late). Without a stack file, the events' ``phase_start`` records stand in (phases whose
    start was evicted from the ring are then missing). The stack is the chain of parents
    (``parent_scope_id``) of the innermost open phase that started last; the flight
    recorder's :func:`memspan.oom.service.phase_stack` answers the same question for a live
    process. Entries carry ``name``, ``path``, ``scope_id``, ``parent_scope_id``, ``depth``,
    ``start``, ``attributes`` (bounded, ``attributes_truncated`` counting what was cut) and,
    when known, ``thread_id`` and ``thread_name``. Never more entries than open phases,
    never a phase twice.
    """
    return _stack_of(open_candidates(events, stack))


def _stack_of(candidates: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    if not candidates:
        return []
    parents = {id(p) for c in candidates.values() if (p := _parent(c, candidates)) is not None}
    leaves = [c for c in candidates.values() if id(c) not in parents] or list(candidates.values())
    leaf = max(leaves, key=lambda c: (c.get("start") or 0.0, c.get("depth") or 0))
    chain: list[dict[str, Any]] = []
    seen: set[int] = set()
    node: dict[str, Any] | None = leaf
    while node is not None and id(node) not in seen and len(chain) < 4096:
        seen.add(id(node))
        chain.append(node)
        node = _parent(node, candidates)
    chain.reverse()
    return chain


def stack_phase_ends(events: list[dict[str, Any]], stack: OpenStack | None
                     ) -> list[dict[str, Any]]:
    """The stack file's closed records whose ``phase_end`` the events do not have yet, as
    ``phase_end`` events stamped with their end time (``source: stack``)."""
    if stack is None or not stack.valid:
        return []
    ended = {scope for e in events if e.get("type") == EventType.PHASE_END.value
             and (scope := _scope(e)) is not None}
    out = []
    for record in stack.closed:
        scope = _scope(record)
        end = _number(record.get("end"))
        if scope is None or scope in ended or end is None:
            continue
        ended.add(scope)
        out.append({**record, "type": EventType.PHASE_END.value, "ts": end, "source": "stack"})
    return out


def _time_order(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events oldest first by when they happened (an event without a time keeps the time of
    the one before it)."""
    keyed = []
    last = 0.0
    for index, event in enumerate(events):
        ts = _number(event.get("ts"))
        last = ts if ts is not None else last
        keyed.append((last, index, event))
    keyed.sort(key=lambda item: (item[0], item[1]))
    return [event for _, _, event in keyed]


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
                        max_dumps: int, max_total_mb: int,
                        child_exited_at: float | None = None) -> BreadcrumbOutcome:
    """Apply the module docstring's rules to ``<dump_dir>/.breadcrumbs``.

    ``child_exited_at``: when the launcher saw its child die (epoch seconds); the child's
    bundle dates its death from it (other processes' from their last breadcrumb)."""
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
                 output_excerpt=output_excerpt or {}, child_exited_at=child_exited_at)
    finally:
        os.close(dir_fd)
    if outcome.bundles:
        prune(dump_dir, max_dumps=max_dumps, max_total_bytes=max_total_mb * 1024 * 1024,
              keep=outcome.bundles[-1])
    return outcome


def _collect(dir_fd: int, dump_dir: str, classification: ProcessExitClassification,
             outcome: BreadcrumbOutcome, *, run_started: float, child_pid: int,
             cgroup_oom_rose: bool, output_excerpt: dict[str, str],
             child_exited_at: float | None) -> None:
    listed = sorted(os.listdir(dir_fd))[:10_000]
    present = set(listed)
    for name in listed:
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
        companion = stack_name(name)
        if match.group(3) == "stack":
            if f"r{rank}_p{pid}.jsonl" in present:
                continue  # read with its breadcrumb file
            companion, name = name, ""
        if _alive(pid):
            continue
        header: dict[str, Any] | None = None
        events: list[dict[str, Any]] = []
        bad_lines = 0
        mtime = 0.0
        try:
            if name:
                info = _regular(dir_fd, name)
                mtime = info.st_mtime
                header, events, bad_lines = read_breadcrumb(name, dir_fd=dir_fd)
            stack = _read_stack(dir_fd, companion, present)
            if not name and stack is None:
                continue
        except UnsafePathError as error:
            shown = name or companion
            outcome.refused.append(f"{os.path.join(dump_dir, DIRECTORY, shown)} {error.strerror}")
            continue
        except OSError:
            outcome.skipped += 1
            continue
        if stack is not None and not stack.valid:
            bad_lines += 1  # a stack file that is not one: counted, its breadcrumbs still read
        started = _started_at(header, mtime or (stack.started_at if stack else None) or 0.0)
        if started < run_started:
            outcome.stale.append(os.path.join(dump_dir, DIRECTORY, name or companion))
            continue
        rss = highest_rss(events)
        if rss is not None and (outcome.peak_rss_bytes is None or rss > outcome.peak_rss_bytes):
            outcome.peak_rss_bytes = rss
        evidence = ("cgroup oom_kill counter rose during the run" if cgroup_oom_rose else
                    "the child was killed by a signal" if signalled(classification.exit_code)
                    else None)
        if evidence is None:
            outcome.discarded += 1
            _remove(dir_fd, name, companion, present, outcome)
            continue
        path = _write(dump_dir, name or companion, rank, pid, header, events, stack, bad_lines,
                      classification, evidence, child_pid, output_excerpt, outcome,
                      child_exited_at if pid == child_pid else None)
        if path is not None:
            outcome.bundles.append(path)
            _remove(dir_fd, name, companion, present, outcome)


def _regular(dir_fd: int, name: str) -> os.stat_result:
    info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePathError(errno.ELOOP, "is a symlink (refused, never followed)", name)
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePathError(errno.EINVAL, "is not a regular file (refused)", name)
    return info


def _read_stack(dir_fd: int, name: str, present: set[str]) -> OpenStack | None:
    """The stack file ``name`` beside a breadcrumb, bounded; None when there is none."""
    if name not in present:
        return None
    _regular(dir_fd, name)
    return parse_open_stack(read_regular_file(name, MAX_STACK_BYTES, dir_fd=dir_fd).data)


def _remove(dir_fd: int, name: str, companion: str, present: set[str],
            outcome: BreadcrumbOutcome) -> None:
    for each in (name, companion if companion in present else ""):
        if not each:
            continue
        try:
            unlink_in(dir_fd, each)
        except OSError as error:
            outcome.warnings.append(f"cannot remove breadcrumb {each}: {error.strerror}")


def _write(dump_dir: str, name: str, rank: int, pid: int, header: dict[str, Any] | None,
           events: list[dict[str, Any]], stack: OpenStack | None, bad_lines: int,
           classification: ProcessExitClassification, evidence: str, child_pid: int,
           output_excerpt: dict[str, str], outcome: BreadcrumbOutcome,
           exited_at: float | None) -> str | None:
    candidates = open_candidates(events, stack)
    phases = _stack_of(candidates)
    in_stack = {id(p) for p in phases}
    others = [c for c in candidates.values() if id(c) not in in_stack][:64]
    events = _time_order(events + stack_phase_ends(events, stack))
    last_event = max((t for e in events if (t := _number(e.get("ts"))) is not None),
                     default=None)
    samples = [e for e in events if e.get("type") == "sample"]
    session = (header or {}).get("session_id")
    died = exited_at if exited_at is not None else last_event
    manifest = {
        "created_at_utc": datetime.now(timezone.utc).isoformat(),
        "reason": classification.reason,
        "kind": classification.kind or "crash",
        "backend": "process",
        "trace_id": None,
        "span_id": None,
        "phase_path": phases[-1]["path"] if phases else None,
        "scope_id": phases[-1]["scope_id"] if phases else None,
        "session_id": session if isinstance(session, str) else None,
        "rank": rank,
        "pid": pid,
        "source": "breadcrumb",
        # when the process died: the launcher's reaping of its child, else its last event
        "died_at_unix": died,
        "died_at_from": ("child exit" if exited_at is not None else
                         "last breadcrumb" if last_event is not None else None),
        "last_event_unix": last_event,
    }
    stack_info = None if stack is None else {
        "valid": stack.valid, "bad_slots": stack.bad_slots, "overflow": stack.overflow,
        "open": len(stack.open), "closed": len(stack.closed)}
    content = BundleContent(
        manifest=manifest,
        metadata={"exit": dataclasses.asdict(classification), "breadcrumb_header": header,
                  "corrupt_lines": bad_lines, "context": "process exit",
                  "stack_file": stack_info, "other_open_phases": others,
                  "evidence": evidence, "child_pid": child_pid,
                  "is_child": pid == child_pid,
                  "output_tail": {k: v[-OUTPUT_EXCERPT_BYTES:] for k, v in output_excerpt.items()}},
        phases=phases,
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
