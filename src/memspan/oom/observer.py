"""The CUDA allocator's OOM observer: exact figures, captured before the exception exists.

``torch._C._cuda_attach_out_of_memory_observer(callback)`` calls ``callback(device,
requested, device_allocated, device_free)`` when the caching allocator gives up, before it
raises. It can fire several times per OOM, cannot be detached, and any exception the
callback raises replaces the user's error. Hence:

- one guarded dispatcher per process, attached once (after CUDA is initialised);
- the dispatcher catches everything and only records what it saw (with a debounce for the
  expensive memory-history snapshot);
- listeners are held by the dispatcher, so a tracker that shuts down simply removes itself.
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_logger = logging.getLogger(__name__)

AttachFunction = Callable[[Callable[[int, int, int, int], None]], None]
SnapshotFunction = Callable[[], Any]

DEBOUNCE_S = 1.0
FRESH_S = 30.0
MAX_SNAPSHOT_BYTES = 512 << 20


@dataclass(frozen=True)
class ObservedOOM:
    """What the allocator reported, with when (monotonic seconds)."""

    device: int
    requested_bytes: int
    device_allocated_bytes: int
    device_free_bytes: int
    at: float
    snapshot: bytes | None = None


class AllocatorObserver:
    """Attaches the dispatcher once and remembers the latest observation."""

    def __init__(self, attach: AttachFunction | None = None,
                 snapshot: SnapshotFunction | None = None) -> None:
        self._attach = attach
        self._snapshot = snapshot
        self._attached = False
        self._unavailable = False
        self._lock = threading.Lock()
        self.latest: ObservedOOM | None = None
        self.calls = 0
        self.capture_history = False
        self._listeners: list[Callable[[ObservedOOM], None]] = []

    def add_listener(self, listener: Callable[[ObservedOOM], None]) -> None:
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[ObservedOOM], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    @property
    def attached(self) -> bool:
        return self._attached

    def ensure_attached(self) -> bool:
        """Attach the dispatcher if possible; cheap to call repeatedly."""
        if self._attached:
            return True
        if self._unavailable:
            return False
        attach = self._attach
        if attach is None:
            attach = _real_attach()
            if attach is None:
                return False
            if attach is _MISSING:  # this torch build has no observer hook: stop asking
                self._unavailable = True
                return False
        with self._lock:
            if self._attached:
                return True
            try:
                attach(self._dispatch)
            except Exception as error:
                _logger.info("memspan: allocator OOM observer not attached: %s", error)
                self._unavailable = True
                return False
            self._attached = True
        return True

    def _dispatch(self, device: int, requested: int, allocated: int, free: int) -> None:
        try:
            now = time.monotonic()
            self.calls += 1
            previous = self.latest
            snapshot = None
            repeated = (previous is not None and previous.device == device
                        and now - previous.at < DEBOUNCE_S)
            if self.capture_history and not repeated:
                snapshot = self._take_snapshot()
            elif repeated and previous is not None:
                snapshot = previous.snapshot
            observed = ObservedOOM(int(device), int(requested), int(allocated), int(free), now,
                                   snapshot)
            self.latest = observed
            if not repeated:
                for listener in list(self._listeners):
                    listener(observed)
        except BaseException:  # the allocator would turn anything we raise into the user's error
            pass

    def _take_snapshot(self) -> bytes | None:
        function = self._snapshot or _real_snapshot
        try:
            data = pickle.dumps(function())
        except Exception:
            return None
        return data if len(data) <= MAX_SNAPSHOT_BYTES else None

    def fresh(self, max_age_s: float = FRESH_S) -> ObservedOOM | None:
        """The latest observation if it is recent enough to belong to the OOM at hand."""
        latest = self.latest
        if latest is None or time.monotonic() - latest.at > max_age_s:
            return None
        return latest


def _missing_hook(_callback: Callable[[int, int, int, int], None]) -> None:
    """Stands for the attach function of a torch build that has none."""


_MISSING: AttachFunction = _missing_hook


def _real_attach() -> AttachFunction | None:
    """torch's attach function; None before CUDA is initialised, _MISSING if torch has none."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    attach: AttachFunction | None = getattr(torch._C, "_cuda_attach_out_of_memory_observer", None)
    return attach if attach is not None else _MISSING


def _real_snapshot() -> Any:
    import sys

    torch = sys.modules["torch"]
    return torch.cuda.memory._snapshot()


_process_observer: AllocatorObserver | None = None
_process_lock = threading.Lock()


def process_observer() -> AllocatorObserver:
    """The one observer of this process (the allocator hook cannot be detached)."""
    global _process_observer
    with _process_lock:
        if _process_observer is None:
            _process_observer = AllocatorObserver()
        return _process_observer
