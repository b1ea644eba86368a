"""Decide whether an exception is an out-of-memory error, of which kind, and with what figures.

Rules, applied to the exception, the members of an exception group (``ExceptionGroup`` and
``BaseExceptionGroup``, recognised by their ``exceptions`` attribute so Python 3.10 works
too) and then along the ``__cause__``/``__context__`` chain, breadth first, at most
:data:`MAX_NODES` exceptions:

1. ``torch.OutOfMemoryError`` (the same class as ``torch.cuda.OutOfMemoryError``) is a
   ``device_oom``; TensorFlow's ``ResourceExhaustedError`` too (matched by type name).
2. ``MemoryError`` is a ``host_oom``.
3. In the ``RuntimeError`` family only (``torch.AcceleratorError`` included), message
   patterns: device OOM wording of CUDA, cuBLAS/cuDNN/cuSOLVER, HIP, XLA and MPS is
   ``device_oom``; the CPU allocator's refusal is ``host_oom``; ``CUDNN_STATUS_NOT_SUPPORTED``
   (often memory in disguise) is ``possible_oom``; a DataLoader worker killed by SIGKILL is
   ``oom_killed`` (suspected).
4. Anything else is not an OOM, whatever its message says: a ``ValueError("out of memory
   guard disabled")`` is a ValueError.

Figures in the message are parsed into bytes for the current and the pre-2.1 torch formats:
requested (``Tried to allocate``), device total and free, and the caching allocator's own
split of what it holds (``allocated by PyTorch`` and ``reserved by PyTorch but
unallocated``; before 2.1 ``already allocated`` and ``reserved in total by PyTorch``). When
the reserved-but-unallocated bytes could have held the request (see
:func:`fragmentation_likely`), the classification says fragmentation is the likely cause and
suggests ``PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True``.

Invariants: classification never raises (an exception whose ``__str__`` raises is read as
an empty message), and every parsed figure is a non-negative integer or absent.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from enum import Enum

#: the most exceptions one classification looks at (the exception, group members, causes)
MAX_NODES = 64
#: the longest message prefix searched for patterns and figures (OOM messages are short)
MAX_MESSAGE_CHARS = 64 << 10
#: figures above this are not believed (a message cannot describe a 16 EiB device)
MAX_FIGURE_BYTES = 1 << 64
#: the allocator setting that lets segments grow instead of fragmenting (torch >= 2.1)
FRAGMENTATION_SETTING = "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"


class OOMKind(str, Enum):
    DEVICE = "device_oom"
    HOST = "host_oom"
    POSSIBLE = "possible_oom"
    KILLED = "oom_killed"


@dataclass(frozen=True)
class OOMExceptionClassification:
    """Normalized classification result for an exception.

    ``is_oom`` and ``reason`` keep Stormlog's meaning; the other fields are memspan's:
    the kind, the exception that matched, the figures parsed from its message (bytes,
    never negative) and, when the allocator's cache is the likely culprit, a suggestion.
    ``allocated_bytes`` is what the caching allocator had handed out and
    ``reserved_unallocated_bytes`` what it held in its cache without handing out.
    """

    is_oom: bool
    reason: str | None
    kind: str | None = None
    matched_type: str | None = None
    requested_bytes: int | None = None
    device: str | None = None
    device_total_bytes: int | None = None
    device_free_bytes: int | None = None
    allocated_bytes: int | None = None
    reserved_unallocated_bytes: int | None = None
    fragmentation_likely: bool = False
    suggestion: str | None = None


NOT_OOM = OOMExceptionClassification(False, None)

_UNITS = {
    "b": 1, "bytes": 1, "byte": 1,
    "kib": 1 << 10, "kb": 1 << 10, "k": 1 << 10,
    "mib": 1 << 20, "mb": 1 << 20, "m": 1 << 20,
    "gib": 1 << 30, "gb": 1 << 30, "g": 1 << 30,
    "tib": 1 << 40, "tb": 1 << 40, "t": 1 << 40,
}
_SIZE = r"(\d{1,24}(?:\.\d{1,24})?)\s*(TiB|GiB|MiB|KiB|TB|GB|MB|KB|bytes|B)\b"

_DEVICE_PATTERNS = (
    ("out of memory", re.compile(r"\bout of memory\b", re.IGNORECASE)),
    ("CUBLAS_STATUS_ALLOC_FAILED", re.compile(r"CUBLAS_STATUS_ALLOC_FAILED")),
    ("CUDNN_STATUS_ALLOC_FAILED", re.compile(r"CUDNN_STATUS_ALLOC_FAILED")),
    ("CUSOLVER_STATUS_ALLOC_FAILED", re.compile(r"CUSOLVER_STATUS_ALLOC_FAILED")),
    ("hipErrorOutOfMemory", re.compile(r"hipErrorOutOfMemory")),
    ("RESOURCE_EXHAUSTED", re.compile(r"RESOURCE_EXHAUSTED")),
    ("MPS backend out of memory", re.compile(r"MPS backend out of memory")),
)
_HOST_PATTERNS = (
    ("DefaultCPUAllocator", re.compile(r"DefaultCPUAllocator: (?:can't allocate memory|not enough memory)")),
)
_POSSIBLE_PATTERNS = (("CUDNN_STATUS_NOT_SUPPORTED", re.compile(r"CUDNN_STATUS_NOT_SUPPORTED")),)
_KILLED_PATTERNS = (
    ("dataloader_worker_killed",
     re.compile(r"DataLoader worker \(pid[^)]{0,64}\) is killed by signal: Killed")),
)

_TRIED = re.compile(r"Tried to allocate " + _SIZE, re.IGNORECASE)
# torch >= 2.1 ("capacty" is 2.1's spelling); XPU leaves out the free part
_NEW_TOTAL = re.compile(
    r"GPU ?(\d*) has a total capac(?:i)?ty of " + _SIZE + r"(?: of which " + _SIZE + r" is free)?",
    re.IGNORECASE,
)
_OLD_FORMAT = re.compile(
    r"\((?:GPU|XPU|device) (\d+); " + _SIZE + r" total capacity;[^)]{0,512}?" + _SIZE + r" free",
    re.IGNORECASE,
)
_NEW_SPLIT = re.compile(
    r"Of the allocated memory " + _SIZE + r" is allocated by PyTorch, and " + _SIZE
    + r" is reserved by PyTorch but unallocated", re.IGNORECASE,
)
_OLD_ALLOCATED = re.compile(_SIZE + r" already allocated", re.IGNORECASE)
_OLD_RESERVED = re.compile(_SIZE + r" reserved in total by PyTorch", re.IGNORECASE)
_CPU_REQUEST = re.compile(r"you tried to allocate (\d{1,24}) bytes", re.IGNORECASE)
_MPS_MAX = re.compile(r"max allowed: " + _SIZE, re.IGNORECASE)
_BACKEND = re.compile(r"\b(HIP|XPU|MPS|CUDA)\b", re.IGNORECASE)


def to_bytes(number: str, unit: str) -> int | None:
    """``number`` ``unit`` in bytes, or None when it is not a believable size."""
    value = float(number) * _UNITS[unit.lower()]
    if not math.isfinite(value) or value < 0 or value > MAX_FIGURE_BYTES:
        return None
    return int(value)


def _backend_prefix(message: str) -> str:
    """The backend a message names first, as a whole word (``membership`` is not ``hip``)."""
    match = _BACKEND.search(message)
    return match.group(1).lower() if match else "cuda"


def _put(figures: dict[str, int | str], key: str, value: int | None) -> None:
    if value is not None:
        figures[key] = value


def parse_figures(message: str) -> dict[str, int | str]:
    """The figures an OOM message states, as non-negative byte counts, and the device named.

    Keys, each present only when stated: ``requested_bytes``, ``device``,
    ``device_total_bytes``, ``device_free_bytes``, ``allocated_bytes``,
    ``reserved_unallocated_bytes``. Never raises.
    """
    message = message[:MAX_MESSAGE_CHARS]
    figures: dict[str, int | str] = {}
    tried = _TRIED.search(message)
    if tried:
        _put(figures, "requested_bytes", to_bytes(tried.group(1), tried.group(2)))
    else:
        cpu = _CPU_REQUEST.search(message)
        if cpu:
            _put(figures, "requested_bytes", to_bytes(cpu.group(1), "b"))
    new = _NEW_TOTAL.search(message)
    old = None if new else _OLD_FORMAT.search(message)
    if new:
        index = new.group(1)
        figures["device"] = f"{_backend_prefix(message)}:{index}" if index else _backend_prefix(
            message)
        _put(figures, "device_total_bytes", to_bytes(new.group(2), new.group(3)))
        if new.group(4) is not None:
            _put(figures, "device_free_bytes", to_bytes(new.group(4), new.group(5)))
    elif old:
        figures["device"] = f"{_backend_prefix(message)}:{old.group(1)}"
        _put(figures, "device_total_bytes", to_bytes(old.group(2), old.group(3)))
        _put(figures, "device_free_bytes", to_bytes(old.group(4), old.group(5)))
    elif _backend_prefix(message) == "mps":
        figures["device"] = "mps"
        mps_max = _MPS_MAX.search(message)
        if mps_max:
            _put(figures, "device_total_bytes", to_bytes(mps_max.group(1), mps_max.group(2)))
    split = _NEW_SPLIT.search(message)
    if split:
        _put(figures, "allocated_bytes", to_bytes(split.group(1), split.group(2)))
        _put(figures, "reserved_unallocated_bytes", to_bytes(split.group(3), split.group(4)))
    else:
        allocated = _OLD_ALLOCATED.search(message)
        reserved = _OLD_RESERVED.search(message)
        allocated_bytes = to_bytes(allocated.group(1), allocated.group(2)) if allocated else None
        _put(figures, "allocated_bytes", allocated_bytes)
        if reserved and allocated_bytes is not None:
            reserved_bytes = to_bytes(reserved.group(1), reserved.group(2))
            if reserved_bytes is not None:
                figures["reserved_unallocated_bytes"] = max(0, reserved_bytes - allocated_bytes)
    return figures


def fragmentation_likely(requested_bytes: int | None, reserved_unallocated_bytes: int | None
                         ) -> bool:
    """True when the allocator's cache held at least the requested size without handing it out.

    The caching allocator frees its unused cached blocks and retries before it gives up, so
    at the moment of the error what stays "reserved but unallocated" is split off blocks
    that are partly in use. If that is at least the size of the request, enough memory
    was there in total but in pieces: fragmentation, which ``expandable_segments`` avoids.
    """
    if requested_bytes is None or reserved_unallocated_bytes is None or requested_bytes <= 0:
        return False
    return reserved_unallocated_bytes >= requested_bytes


def _mib(value: int) -> str:
    return f"{value / (1 << 20):.1f} MiB"


def fragmentation_suggestion(requested_bytes: int, reserved_unallocated_bytes: int) -> str:
    return (f"likely fragmentation: {_mib(reserved_unallocated_bytes)} reserved by PyTorch but "
            f"unallocated is at least the {_mib(requested_bytes)} requested; set "
            f"{FRAGMENTATION_SETTING}")


def exception_text(exc: BaseException) -> str:
    """``str(exc)``, or an empty string when the exception's ``__str__`` raises."""
    try:
        text = str(exc)
    except Exception:
        return ""
    return text


def _group_members(exc: BaseException) -> tuple[BaseException, ...]:
    """The members of an exception group (duck-typed: Python 3.10 has no ExceptionGroup)."""
    try:
        members = getattr(exc, "exceptions", None)
    except Exception:
        return ()
    if not isinstance(members, (tuple, list)):
        return ()
    return tuple(m for m in members[:MAX_NODES] if isinstance(m, BaseException))


def _walk(exc: BaseException) -> list[BaseException]:
    """The exception, its group members and its causes/contexts, breadth first, bounded."""
    out: list[BaseException] = []
    seen: set[int] = set()
    queue: deque[BaseException] = deque([exc])
    while queue and len(out) < MAX_NODES:
        node = queue.popleft()
        if id(node) in seen:
            continue
        seen.add(id(node))
        out.append(node)
        queue.extend(_group_members(node))
        for link in (node.__cause__, node.__context__):
            if link is not None:
                queue.append(link)
    return out


def _type_names(exc: BaseException) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}


def _classify_one(exc: BaseException) -> OOMExceptionClassification | None:
    names = _type_names(exc)
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    if "torch.OutOfMemoryError" in names or "torch.cuda.OutOfMemoryError" in names:
        return _result(OOMKind.DEVICE, "torch.OutOfMemoryError", type_name, exception_text(exc))
    if any(name.endswith("ResourceExhaustedError") for name in names):
        return _result(OOMKind.DEVICE, "tensorflow.ResourceExhaustedError", type_name,
                       exception_text(exc))
    if isinstance(exc, MemoryError):
        return _result(OOMKind.HOST, "MemoryError", type_name, exception_text(exc))
    if not isinstance(exc, RuntimeError):
        return None
    message = exception_text(exc)[:MAX_MESSAGE_CHARS]
    for kind, patterns in (
        (OOMKind.HOST, _HOST_PATTERNS),
        (OOMKind.DEVICE, _DEVICE_PATTERNS),
        (OOMKind.POSSIBLE, _POSSIBLE_PATTERNS),
        (OOMKind.KILLED, _KILLED_PATTERNS),
    ):
        for label, pattern in patterns:
            if pattern.search(message):
                return _result(kind, f"message_pattern:{label}", type_name, message)
    return None


def _int(figures: dict[str, int | str], key: str) -> int | None:
    value = figures.get(key)
    return value if isinstance(value, int) else None


def _result(kind: OOMKind, reason: str, type_name: str, message: str) -> OOMExceptionClassification:
    figures = parse_figures(message)
    device = figures.get("device")
    requested = _int(figures, "requested_bytes")
    unallocated = _int(figures, "reserved_unallocated_bytes")
    fragmented = fragmentation_likely(requested, unallocated)
    return OOMExceptionClassification(
        is_oom=True,
        reason=reason,
        kind=kind.value,
        matched_type=type_name,
        requested_bytes=requested,
        device=str(device) if device is not None else None,
        device_total_bytes=_int(figures, "device_total_bytes"),
        device_free_bytes=_int(figures, "device_free_bytes"),
        allocated_bytes=_int(figures, "allocated_bytes"),
        reserved_unallocated_bytes=unallocated,
        fragmentation_likely=fragmented,
        suggestion=fragmentation_suggestion(requested or 0, unallocated or 0) if fragmented
        else None,
    )


def classify_oom_exception(exc: BaseException) -> OOMExceptionClassification:
    """Classify whether an exception corresponds to an OOM condition (never raises)."""
    for node in _walk(exc):
        result = _classify_one(node)
        if result is not None:
            return result
    return NOT_OOM
