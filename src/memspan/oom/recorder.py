"""The OOM flight recorder: a bounded ring of recent memory events and the dumps it writes.

Keeps Stormlog's API (``OOMFlightRecorderConfig``, ``OOMFlightRecorder`` with
``record_event``/``snapshot_events``/``clear``/``dump``) and fixes what Stormlog got wrong:
the bundle just written is never pruned, a failed dump reports why instead of vanishing,
and dumps are single-flight (one at a time per process; concurrent OOMs wait their turn and
each get their own bundle).

Dumps are rate limited (``max_dumps_per_minute``, default 10): a program that hits OOMs in a
tight loop gets its first bundles and then only counted, skipped dumps.

Each bundle written is announced in one line on stderr (where it is and the command that
shows it); set ``announce = False`` on the recorder to silence it.

Invariant: ``dump`` never raises. A dump that cannot be written (unwritable directory, full
disk, ``MemoryError`` while writing) returns ``None`` and :meth:`write_dump` reports the
error so the span can say ``memspan.oom.dump.error``.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import platform
import shlex
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from memspan import names
from memspan.drops import DUMP_FAILED, DUMP_RATE_LIMITED, DropLedger
from memspan.oom.bundle import (
    MAX_EVENTS_FILE_BYTES,
    BundleContent,
    allowed_environment,
    bundle_name,
    write_bundle,
)
from memspan.oom.classify import OOMExceptionClassification, classify_oom_exception, exception_text
from memspan.oom.retention import prune
from memspan.oom.ring import EventRing
from memspan.version import __version__

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OOMFlightRecorderConfig:
    """Runtime configuration for OOM flight recorder dumps."""

    enabled: bool = False
    dump_dir: str = "oom_dumps"
    buffer_size: int = 10000
    max_dumps: int = 5
    max_total_mb: int = 256

    def __post_init__(self) -> None:
        for name in ("buffer_size", "max_dumps", "max_total_mb"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"OOMFlightRecorderConfig.{name} must be an integer >= 1, "
                                 f"got {value!r}")
        if not isinstance(self.dump_dir, str) or not self.dump_dir.strip():
            raise ValueError(f"OOMFlightRecorderConfig.dump_dir must be a non-empty path, "
                             f"got {self.dump_dir!r}")


@dataclass(frozen=True)
class DumpResult:
    """Where a dump went, or why it did not."""

    path: str | None
    error: str | None = None
    removed_by_retention: tuple[str, ...] = ()


@dataclass
class DumpRequest:
    """Everything a dump needs beyond the ring buffer."""

    reason: str
    exception: BaseException | None
    context: str | None
    backend: str
    classification: OOMExceptionClassification
    metadata: Mapping[str, Any] | None = None
    session_summary: Any = None
    trace_id: str | None = None
    span_id: str | None = None
    phase_path: str | None = None
    scope_id: str | None = None
    session_id: str | None = None
    phases: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    cuda_snapshot: bytes | None = None
    observer_figures: Mapping[str, Any] | None = None


MemoryProvider = Callable[[], dict[str, Any]]


class OOMFlightRecorder:
    """Bounded recorder that writes dump bundles on OOM."""

    def __init__(
        self,
        config: OOMFlightRecorderConfig,
        *,
        rank_identity: Mapping[str, int] | None = None,
        ledger: DropLedger | None = None,
        memory_provider: MemoryProvider | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger if ledger is not None else DropLedger()
        self.ring = EventRing(config.buffer_size, ledger=self.ledger)
        identity = dict(rank_identity or {})
        self.rank = int(identity.get(names.RANK, 0))
        self.rank_identity = identity
        self.memory_provider = memory_provider
        self._sequence = itertools.count(1)
        self._dump_lock = threading.Lock()
        self.time_budget_s = 10.0
        self.max_events_file_bytes = MAX_EVENTS_FILE_BYTES
        self.max_dumps_per_minute = 10
        #: print one line on stderr for each bundle written
        self.announce = True
        self._recent_dumps: collections.deque[float] = collections.deque()

    # -- Stormlog API ------------------------------------------------------------------------
    def record_event(self, event: dict[str, Any]) -> None:
        """Append one event payload to the in-memory ring buffer."""
        self.ring.record(event)

    def snapshot_events(self) -> list[dict[str, Any]]:
        """Return buffered events in chronological order."""
        return self.ring.snapshot()

    def clear(self) -> None:
        """Discard buffered events for the next session/run."""
        self.ring.clear()

    def dump(
        self,
        *,
        reason: str,
        exception: BaseException,
        context: str | None,
        backend: str,
        metadata: dict[str, Any] | None = None,
        session_summary: Any = None,
    ) -> str | None:
        """Write an OOM diagnostic bundle and enforce retention constraints."""
        request = DumpRequest(
            reason=reason, exception=exception, context=context, backend=backend,
            classification=classify_oom_exception(exception), metadata=metadata,
            session_summary=session_summary,
        )
        return self.write_dump(request).path

    # -- memspan -----------------------------------------------------------------------------
    def write_dump(self, request: DumpRequest) -> DumpResult:
        """Write one bundle (single-flight) and prune; never raises."""
        if not self.config.enabled:
            return DumpResult(None, "the flight recorder is disabled")
        if self._rate_limited():
            self.ledger.add(DUMP_RATE_LIMITED, warning="OOMs are repeating faster than "
                            f"{self.max_dumps_per_minute} a minute; further dumps are skipped")
            return DumpResult(None, f"rate limited: more than {self.max_dumps_per_minute} "
                              "dumps in the last minute")
        with self._dump_lock:
            try:
                name = bundle_name(self.rank, os.getpid(), next(self._sequence))
                path = write_bundle(
                    self.config.dump_dir, name, self._content(request, name),
                    max_events_file_bytes=self.max_events_file_bytes,
                    time_budget_s=self.time_budget_s,
                )
            except BaseException as error:  # MemoryError included: report, never mask
                if isinstance(error, (KeyboardInterrupt, SystemExit)):
                    raise
                message = f"{type(error).__name__}: {error}"
                self.ledger.add(DUMP_FAILED, warning=f"an OOM dump could not be written: {message}")
                return DumpResult(None, message)
            removed: tuple[str, ...] = ()
            try:
                removed = tuple(prune(
                    self.config.dump_dir, max_dumps=self.config.max_dumps,
                    max_total_bytes=self.config.max_total_mb * 1024 * 1024, keep=path,
                ).removed)
            except OSError as error:
                _logger.warning("memspan: pruning %s failed: %s", self.config.dump_dir, error)
        if self.announce:
            announce_bundle(path)
        return DumpResult(path, None, removed)

    def _rate_limited(self) -> bool:
        """A program failing in a tight loop must not spend its life writing bundles."""
        now = time.monotonic()
        with self._dump_lock:
            recent = self._recent_dumps
            while recent and now - recent[0] > 60.0:
                recent.popleft()
            if len(recent) >= self.max_dumps_per_minute:
                return True
            recent.append(now)
            return False

    def _content(self, request: DumpRequest, name: str) -> BundleContent:
        c = request.classification
        exception = request.exception
        manifest = {
            "created_at_utc": datetime.now(timezone.utc).isoformat(),
            "reason": request.reason,
            "kind": c.kind,
            "backend": request.backend,
            "trace_id": request.trace_id,
            "span_id": request.span_id,
            "phase_path": request.phase_path,
            "scope_id": request.scope_id,
            "session_id": request.session_id,
            "rank": self.rank,
            "local_rank": self.rank_identity.get(names.LOCAL_RANK),
            "world_size": self.rank_identity.get(names.WORLD_SIZE),
            "pid": os.getpid(),
        }
        metadata: dict[str, Any] = {
            "exception": None if exception is None else {
                "type": type(exception).__qualname__,
                "module": type(exception).__module__,
                "message": exception_text(exception)[:65536],
            },
            "context": request.context,
            "classification": dataclasses.asdict(c),
            "observer": dict(request.observer_figures) if request.observer_figures else None,
            "user_metadata": dict(request.metadata) if request.metadata else {},
        }
        if request.session_summary is not None:
            summary = request.session_summary
            metadata["session_summary"] = (
                dataclasses.asdict(summary) if dataclasses.is_dataclass(summary)
                and not isinstance(summary, type) else _text(summary)
            )
        memory: dict[str, Any] = {}
        if self.memory_provider is not None:
            try:
                memory = self.memory_provider()
            except Exception as error:
                memory = {"error": f"{type(error).__name__}: {error}"}
        text = "".join(traceback.format_exception(exception)) if exception is not None else ""
        return BundleContent(
            manifest=manifest,
            metadata=metadata,
            phases=request.phases,
            memory=memory,
            environment=environment_report(),
            traceback_text=text,
            events=self.ring.iter_snapshot(),
            cuda_snapshot=request.cuda_snapshot,
        )


def _text(value: object) -> str:
    try:
        return str(value)
    except Exception as error:
        return f"<unprintable {type(value).__name__}: {type(error).__name__}>"


def announce_bundle(path: str) -> None:
    """One line on stderr: where the bundle is and how to look at it (never raises)."""
    line = f"memspan: OOM bundle written; look at it with: memspan dumps show {shlex.quote(path)}\n"
    try:
        sys.stderr.write(line)
        sys.stderr.flush()
    except Exception:  # no stderr (closed, detached): the span still carries the path
        pass


def environment_report() -> dict[str, Any]:
    """Versions, process identity and an allowlist of environment variables: never secrets."""
    torch = sys.modules.get("torch")
    versions: dict[str, Any] = {
        "python": platform.python_version(),
        "memspan": __version__,
        "platform": platform.platform(),
    }
    if torch is not None:
        versions["torch"] = getattr(torch, "__version__", None)
        version = getattr(torch, "version", None)
        versions["cuda"] = getattr(version, "cuda", None)
        versions["hip"] = getattr(version, "hip", None)
    return {
        "versions": versions,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "cwd": os.getcwd(),
        "program": os.path.basename(sys.argv[0]) if sys.argv else None,
        "time_unix": time.time(),
        "env": allowed_environment(),
    }
