"""Decide whether an exception is an out-of-memory error, of which kind, and with what figures.

Rules, applied to the exception and then along its ``__cause__``/``__context__`` chain:

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

Figures in the message (``Tried to allocate``, total capacity, free) are parsed into bytes
for both the current and the pre-2.1 torch formats.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

MAX_CHAIN = 16


class OOMKind(str, Enum):
    DEVICE = "device_oom"
    HOST = "host_oom"
    POSSIBLE = "possible_oom"
    KILLED = "oom_killed"


@dataclass(frozen=True)
class OOMExceptionClassification:
    """Normalized classification result for an exception.

    ``is_oom`` and ``reason`` keep Stormlog's meaning; the other fields are memspan's:
    the kind, the exception of the chain that matched, and the figures parsed from it.
    """

    is_oom: bool
    reason: str | None
    kind: str | None = None
    matched_type: str | None = None
    requested_bytes: int | None = None
    device: str | None = None
    device_total_bytes: int | None = None
    device_free_bytes: int | None = None


NOT_OOM = OOMExceptionClassification(False, None)

_UNITS = {
    "b": 1, "bytes": 1, "byte": 1,
    "kib": 1 << 10, "kb": 1 << 10, "k": 1 << 10,
    "mib": 1 << 20, "mb": 1 << 20, "m": 1 << 20,
    "gib": 1 << 30, "gb": 1 << 30, "g": 1 << 30,
    "tib": 1 << 40, "tb": 1 << 40, "t": 1 << 40,
}
_SIZE = r"(\d+(?:\.\d+)?)\s*(TiB|GiB|MiB|KiB|TB|GB|MB|KB|bytes|B)"

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
     re.compile(r"DataLoader worker \(pid[^)]*\) is killed by signal: Killed")),
)

_TRIED = re.compile(r"Tried to allocate " + _SIZE, re.IGNORECASE)
_NEW_TOTAL = re.compile(
    r"GPU (\d+) has a total capacity of " + _SIZE + r" of which " + _SIZE + r" is free",
    re.IGNORECASE,
)
_OLD_FORMAT = re.compile(
    r"\((?:GPU|XPU|device) (\d+); " + _SIZE + r" total capacity;.*?" + _SIZE + r" free",
    re.IGNORECASE,
)
_CPU_REQUEST = re.compile(r"you tried to allocate (\d+) bytes", re.IGNORECASE)
_MPS_MAX = re.compile(r"max allowed: " + _SIZE, re.IGNORECASE)


def to_bytes(number: str, unit: str) -> int:
    return int(float(number) * _UNITS[unit.lower()])


def _backend_prefix(message: str) -> str:
    lowered = message.lower()
    if "hip" in lowered:
        return "hip"
    if "xpu" in lowered:
        return "xpu"
    if "mps" in lowered:
        return "mps"
    return "cuda"


def parse_figures(message: str) -> dict[str, int | str]:
    """Requested/total/free bytes and the device named in an OOM message, when present."""
    figures: dict[str, int | str] = {}
    tried = _TRIED.search(message)
    if tried:
        figures["requested_bytes"] = to_bytes(tried.group(1), tried.group(2))
    else:
        cpu = _CPU_REQUEST.search(message)
        if cpu:
            figures["requested_bytes"] = int(cpu.group(1))
    new = _NEW_TOTAL.search(message)
    old = None if new else _OLD_FORMAT.search(message)
    match = new or old
    if match:
        figures["device"] = f"{_backend_prefix(message)}:{match.group(1)}"
        figures["device_total_bytes"] = to_bytes(match.group(2), match.group(3))
        figures["device_free_bytes"] = to_bytes(match.group(4), match.group(5))
    elif "mps" in message.lower():
        figures["device"] = "mps"
        mps_max = _MPS_MAX.search(message)
        if mps_max:
            figures["device_total_bytes"] = to_bytes(mps_max.group(1), mps_max.group(2))
    return figures


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen and len(out) < MAX_CHAIN:
        out.append(node)
        seen.add(id(node))
        node = node.__cause__ or node.__context__
    return out


def _type_names(exc: BaseException) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}


def _classify_one(exc: BaseException) -> OOMExceptionClassification | None:
    names = _type_names(exc)
    type_name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    message = str(exc)
    if "torch.OutOfMemoryError" in names or "torch.cuda.OutOfMemoryError" in names:
        return _result(OOMKind.DEVICE, "torch.OutOfMemoryError", type_name, message)
    if any(name.endswith("ResourceExhaustedError") for name in names):
        return _result(OOMKind.DEVICE, "tensorflow.ResourceExhaustedError", type_name, message)
    if isinstance(exc, MemoryError):
        return _result(OOMKind.HOST, "MemoryError", type_name, message)
    if not isinstance(exc, RuntimeError):
        return None
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


def _result(kind: OOMKind, reason: str, type_name: str, message: str) -> OOMExceptionClassification:
    figures = parse_figures(message)
    requested = figures.get("requested_bytes")
    device = figures.get("device")
    total = figures.get("device_total_bytes")
    free = figures.get("device_free_bytes")
    return OOMExceptionClassification(
        is_oom=True,
        reason=reason,
        kind=kind.value,
        matched_type=type_name,
        requested_bytes=int(requested) if requested is not None else None,
        device=str(device) if device is not None else None,
        device_total_bytes=int(total) if total is not None else None,
        device_free_bytes=int(free) if free is not None else None,
    )


def classify_oom_exception(exc: BaseException) -> OOMExceptionClassification:
    """Classify whether an exception corresponds to an OOM condition."""
    for node in _chain(exc):
        result = _classify_one(node)
        if result is not None:
            return result
    return NOT_OOM
