"""OOM classification: every pattern, chained causes, figures, and no false positives."""

from __future__ import annotations

import builtins
from typing import Any

import pytest
import torch

from memspan import classify_oom_exception

# Python 3.10 has no exception groups: those tests skip there
EXCEPTION_GROUP: Any = getattr(builtins, "ExceptionGroup", None)
BASE_EXCEPTION_GROUP: Any = getattr(builtins, "BaseExceptionGroup", None)
needs_groups = pytest.mark.skipif(EXCEPTION_GROUP is None, reason="no ExceptionGroup before 3.11")

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


# -- exceptions that fight back, groups, backend words -----------------------------------------
class Unprintable(RuntimeError):
    def __str__(self) -> str:
        raise ValueError("__str__ is broken")


class UnprintableOOM(torch.OutOfMemoryError):
    def __str__(self) -> str:
        raise ValueError("__str__ is broken")


def test_an_exception_whose_str_raises_is_classified_without_raising() -> None:
    assert not classify_oom_exception(Unprintable()).is_oom
    result = classify_oom_exception(UnprintableOOM())
    assert result.kind == "device_oom" and result.requested_bytes is None


@needs_groups
def test_an_exception_group_holding_an_oom_is_an_oom() -> None:
    group = EXCEPTION_GROUP("batch", [ValueError("bad row"), MemoryError()])
    assert classify_oom_exception(group).kind == "host_oom"
    nested = BASE_EXCEPTION_GROUP("outer", [KeyboardInterrupt(), EXCEPTION_GROUP(
        "inner", [torch.OutOfMemoryError(NEW_CUDA)])])
    result = classify_oom_exception(nested)
    assert result.kind == "device_oom" and result.requested_bytes == 2 * GIB
    assert not classify_oom_exception(EXCEPTION_GROUP("x", [ValueError("out of memory")])).is_oom


def test_a_group_is_recognised_by_its_exceptions_attribute() -> None:
    """Python 3.10 has no ExceptionGroup: the exceptiongroup backport is duck-typed."""

    class BackportGroup(Exception):
        def __init__(self, message: str, exceptions: list[BaseException]) -> None:
            super().__init__(message)
            self.exceptions = tuple(exceptions)

    assert classify_oom_exception(BackportGroup("g", [MemoryError()])).kind == "host_oom"

    class OddAttribute(Exception):
        exceptions = "not a sequence of exceptions"

    assert not classify_oom_exception(OddAttribute()).is_oom


@needs_groups
def test_a_huge_group_is_bounded() -> None:
    group = EXCEPTION_GROUP("many", [ValueError(str(i)) for i in range(10_000)] + [MemoryError()])
    assert not classify_oom_exception(group).is_oom  # beyond the bound: not looked at, no hang


@pytest.mark.parametrize(("message", "device"), [
    ("CUDA out of memory. Tried to allocate 2.00 MiB. GPU 1 has a total capacity of 8.00 GiB of "
     "which 0 bytes is free. Process 7 (membership-service) has 8.00 GiB memory in use.", "cuda:1"),
    ("CUDA out of memory (relationship graph). Tried to allocate 1.00 MiB (GPU 0; 8.00 GiB total "
     "capacity; 7.00 GiB already allocated; 0 bytes free; 7.50 GiB reserved in total by PyTorch)",
     "cuda:0"),
    ("CUDA out of memory in the lamps/xpuzzle job. Tried to allocate 1.00 MiB. GPU 2 has a total "
     "capacity of 8.00 GiB of which 1.00 MiB is free.", "cuda:2"),
    (HIP, "hip:3"),
    (XPU, "xpu:0"),
])
def test_backend_words_are_whole_words(message: str, device: str) -> None:
    assert classify_oom_exception(RuntimeError(message)).device == device


# -- the caching allocator's split, current and older formats ----------------------------------
CURRENT = ("CUDA out of memory. Tried to allocate 224.00 MiB. GPU 0 has a total capacity of "
           "44.34 GiB of which 160.81 MiB is free. Process 47694 has 44.17 GiB memory in use. Of "
           "the allocated memory 43.36 GiB is allocated by PyTorch, and 396.27 MiB is reserved by "
           "PyTorch but unallocated. If reserved but unallocated memory is large try setting "
           "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See "
           "documentation for Memory Management  "
           "(https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)")
TORCH_2_1 = ("CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacty of "
             "15.78 GiB of which 3.44 MiB is free. Including non-PyTorch memory, this process has "
             "15.77 GiB memory in use. Of the allocated memory 14.56 GiB is allocated by PyTorch, "
             "and 140.00 MiB is reserved by PyTorch but unallocated. If reserved but unallocated "
             "memory is large try setting max_split_size_mb to avoid fragmentation.")
XPU_NO_FREE = ("XPU out of memory. Tried to allocate 64.00 MiB. GPU 0 has a total capacity of "
               "15.56 GiB. Of the allocated memory 14.00 GiB is allocated by PyTorch, and 10.00 MiB "
               "is reserved by PyTorch but unallocated. Please use `empty_cache` to release all "
               "unoccupied cached memory.")
NOT_FRAGMENTED = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                  "23.55 GiB of which 1.65 GiB is free. Of the allocated memory 20.04 GiB is "
                  "allocated by PyTorch, and 903.34 MiB is reserved by PyTorch but unallocated.")


@pytest.mark.parametrize(("message", "allocated", "unallocated", "fragmented"), [
    (CURRENT, int(43.36 * GIB), int(396.27 * MIB), True),
    (TORCH_2_1, int(14.56 * GIB), 140 * MIB, True),
    (OLD_CUDA, int(14.56 * GIB), int(14.70 * GIB) - int(14.56 * GIB), True),
    (XPU_NO_FREE, 14 * GIB, 10 * MIB, False),
    (NOT_FRAGMENTED, int(20.04 * GIB), int(903.34 * MIB), False),
    (NEW_CUDA, None, None, False),
])
def test_allocated_and_reserved_unallocated_are_parsed(
    message: str, allocated: int | None, unallocated: int | None, fragmented: bool
) -> None:
    result = classify_oom_exception(torch.OutOfMemoryError(message))
    assert result.allocated_bytes == allocated
    assert result.reserved_unallocated_bytes == unallocated
    assert result.fragmentation_likely is fragmented
    if fragmented:
        assert result.suggestion is not None
        assert "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True" in result.suggestion
        assert "fragmentation" in result.suggestion
    else:
        assert result.suggestion is None


def test_current_and_2_1_formats_give_device_figures() -> None:
    current = classify_oom_exception(torch.OutOfMemoryError(CURRENT))
    assert (current.requested_bytes, current.device) == (224 * MIB, "cuda:0")
    assert current.device_free_bytes == int(160.81 * MIB)
    assert current.device_total_bytes == int(44.34 * GIB)
    old = classify_oom_exception(torch.OutOfMemoryError(TORCH_2_1))  # "capacty" in 2.1
    assert old.device_total_bytes == int(15.78 * GIB) and old.device_free_bytes == int(3.44 * MIB)
    xpu = classify_oom_exception(torch.OutOfMemoryError(XPU_NO_FREE))
    assert xpu.device == "xpu:0" and xpu.device_free_bytes is None
    assert xpu.device_total_bytes == int(15.56 * GIB)


def test_absurd_figures_are_not_believed() -> None:
    result = classify_oom_exception(RuntimeError(
        "CUDA out of memory. Tried to allocate 99999999999999999999999.00 TiB. GPU 0 has a total "
        "capacity of 1" + "0" * 23 + " GiB of which 1.00 GiB is free."))
    assert result.requested_bytes is None and result.device_total_bytes is None
    assert result.device_free_bytes == GIB
