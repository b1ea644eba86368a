"""OOM classification: every pattern, chained causes, figures, and no false positives."""

from __future__ import annotations

import pytest
import torch

from memspan import classify_oom_exception

GIB = 1 << 30
MIB = 1 << 20

NEW_CUDA = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
            "79.15 GiB of which 1.44 GiB is free. Including non-PyTorch memory, this process "
            "has 77.70 GiB memory in use.")
OLD_CUDA = ("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 1; 15.78 GiB total capacity; "
            "14.56 GiB already allocated; 3.44 MiB free; 14.70 GiB reserved in total by PyTorch)")
HIP = ("HIP out of memory. Tried to allocate 512.00 MiB. GPU 3 has a total capacity of "
       "63.98 GiB of which 100.00 MiB is free.")
XPU = ("XPU out of memory. Tried to allocate 1.00 GiB (GPU 0; 15.56 GiB total capacity; "
       "14.00 GiB already allocated; 500.00 MiB free)")
MPS = ("MPS backend out of memory (MPS allocated: 17.00 GB, other allocations: 1.00 GB, "
       "max allowed: 18.13 GB). Tried to allocate 256.00 MB on private pool.")
CPU = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
       "memory: you tried to allocate 100000000000000 bytes. Error code 12 (Cannot allocate memory)")


class ResourceExhaustedError(Exception):
    """Stands in for tensorflow.errors.ResourceExhaustedError (matched by type name)."""


CASES = [
    (torch.OutOfMemoryError(NEW_CUDA), "device_oom", "torch.OutOfMemoryError"),
    (torch.cuda.OutOfMemoryError("x"), "device_oom", "torch.OutOfMemoryError"),
    (MemoryError(), "host_oom", "MemoryError"),
    (RuntimeError(OLD_CUDA), "device_oom", "message_pattern:out of memory"),
    (RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)"),
     "device_oom", "message_pattern:CUBLAS_STATUS_ALLOC_FAILED"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), "device_oom",
     "message_pattern:CUDNN_STATUS_ALLOC_FAILED"),
    (RuntimeError("cusolver error: CUSOLVER_STATUS_ALLOC_FAILED"), "device_oom",
     "message_pattern:CUSOLVER_STATUS_ALLOC_FAILED"),
    (RuntimeError("HIP error: hipErrorOutOfMemory"), "device_oom",
     "message_pattern:hipErrorOutOfMemory"),
    (RuntimeError("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error"), "device_oom",
     "message_pattern:RESOURCE_EXHAUSTED"),
    (RuntimeError(MPS), "device_oom", "message_pattern:out of memory"),
    (torch.AcceleratorError("CUDA error: out of memory"), "device_oom",
     "message_pattern:out of memory"),
    (RuntimeError(CPU), "host_oom", "message_pattern:DefaultCPUAllocator"),
    (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed "
                  "in a non-contiguous input."), "possible_oom",
     "message_pattern:CUDNN_STATUS_NOT_SUPPORTED"),
    (RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. "), "oom_killed",
     "message_pattern:dataloader_worker_killed"),
    (ResourceExhaustedError("OOM when allocating tensor"), "device_oom",
     "tensorflow.ResourceExhaustedError"),
]


@pytest.mark.parametrize(("error", "kind", "reason"), CASES, ids=lambda v: str(v)[:30])
def test_classification_table(error: BaseException, kind: str, reason: str) -> None:
    result = classify_oom_exception(error)
    assert result.is_oom
    assert result.kind == kind
    assert result.reason == reason


@pytest.mark.parametrize("error", [
    ValueError("out of memory guard disabled"),
    RuntimeError("failed to allocate socket"),
    KeyError("out of memory"),
    RuntimeError("Zoom out of the memory view"),
    OSError(12, "Cannot allocate memory"),
    RuntimeError("CUDA error: device-side assert triggered"),
])
def test_negatives(error: BaseException) -> None:
    result = classify_oom_exception(error)
    assert not result.is_oom and result.reason is None and result.kind is None


def test_chained_cause_and_context() -> None:
    try:
        try:
            raise torch.OutOfMemoryError(NEW_CUDA)
        except torch.OutOfMemoryError as inner:
            raise ValueError("batch failed") from inner
    except ValueError as outer:
        result = classify_oom_exception(outer)
    assert result.kind == "device_oom" and result.matched_type == "torch.OutOfMemoryError"
    try:
        try:
            raise MemoryError
        except MemoryError:
            raise KeyError("while handling")  # noqa: B904 (the implicit __context__ is the point)
    except KeyError as outer_key:
        assert classify_oom_exception(outer_key).kind == "host_oom"


def test_cyclic_chain_terminates() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert not classify_oom_exception(a).is_oom


@pytest.mark.parametrize(("message", "requested", "device", "total", "free"), [
    (NEW_CUDA, 2 * GIB, "cuda:0", int(79.15 * GIB), int(1.44 * GIB)),
    (OLD_CUDA, 20 * MIB, "cuda:1", int(15.78 * GIB), int(3.44 * MIB)),
    (HIP, 512 * MIB, "hip:3", int(63.98 * GIB), 100 * MIB),
    (XPU, GIB, "xpu:0", int(15.56 * GIB), 500 * MIB),
    (MPS, 256 * MIB, "mps", int(18.13 * GIB), None),
    (CPU, 100000000000000, None, None, None),
])
def test_figures_are_parsed_to_bytes(message: str, requested: int, device: str | None,
                                     total: int | None, free: int | None) -> None:
    result = classify_oom_exception(RuntimeError(message))
    assert result.requested_bytes == requested
    assert result.device == device
    assert result.device_total_bytes == total
    assert result.device_free_bytes == free
