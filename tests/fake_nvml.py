"""A fake ``libnvidia-ml.so`` for the real ``pynvml`` wrapper.

``pynvml`` resolves every C function with ``getattr(pynvml.nvmlLib, name)`` and passes
ctypes objects by reference. :class:`FakeNvmlLib` answers those calls like the driver
would, so tests exercise the genuine wrapper code (argument packing, struct decoding, error
mapping) on a machine without a GPU. Install it with :func:`installed`.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pynvml

SUCCESS = 0
INSUFFICIENT_SIZE = 7
LIB_RM_VERSION_MISMATCH = 18


@dataclass
class FakeGpu:
    uuid: str
    name: str
    pci_bus_id: str
    total: int
    used: int
    util_gpu: int = 0
    util_memory: int = 0
    processes: list[tuple[int, int]] = field(default_factory=list)  # (pid, bytes)


def _target(ref: Any) -> Any:
    """The ctypes object behind ``byref(x)``."""
    return ref._obj


def _handle_index(handle: Any) -> int:
    return int(ctypes.cast(handle, ctypes.c_void_p).value or 0) - 1


class FakeNvmlLib:
    def __init__(self, gpus: list[FakeGpu], init_error: int = SUCCESS,
                 v2_memory: bool = True) -> None:
        self.gpus = gpus
        self.init_error = init_error
        self.v2_memory = v2_memory
        self.calls: list[str] = []

        def error_string(code: int) -> bytes:  # a plain function: pynvml sets .restype on it
            return {LIB_RM_VERSION_MISMATCH: b"RM has detected an NVML/RM version mismatch."}.get(
                code, b"Unknown Error")

        self.nvmlErrorString = error_string

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"fake NVML has no function {name}")

    def nvmlInitWithFlags(self, flags: int) -> int:
        self.calls.append("init")
        return self.init_error

    def nvmlShutdown(self) -> int:
        self.calls.append("shutdown")
        return SUCCESS

    def nvmlDeviceGetCount_v2(self, count_ref: Any) -> int:
        _target(count_ref).value = len(self.gpus)
        return SUCCESS

    def nvmlDeviceGetHandleByIndex_v2(self, index: Any, handle_ref: Any) -> int:
        handle = _target(handle_ref)
        pointer_value = ctypes.c_void_p(index.value + 1)
        ctypes.memmove(ctypes.addressof(handle), ctypes.addressof(pointer_value),
                       ctypes.sizeof(ctypes.c_void_p))
        return SUCCESS

    def nvmlDeviceGetUUID(self, handle: Any, buffer: Any, size: Any) -> int:
        buffer.value = self.gpus[_handle_index(handle)].uuid.encode()
        return SUCCESS

    def nvmlDeviceGetName(self, handle: Any, buffer: Any, size: Any) -> int:
        buffer.value = self.gpus[_handle_index(handle)].name.encode()
        return SUCCESS

    def nvmlDeviceGetPciInfo_v3(self, handle: Any, info_ref: Any) -> int:
        _target(info_ref).busId = self.gpus[_handle_index(handle)].pci_bus_id.encode()
        return SUCCESS

    def nvmlDeviceGetMemoryInfo_v2(self, handle: Any, memory_ref: Any) -> int:
        self.calls.append("memory_v2")
        if not self.v2_memory:
            return 13  # NVML_ERROR_FUNCTION_NOT_FOUND
        gpu = self.gpus[_handle_index(handle)]
        memory = _target(memory_ref)
        memory.total, memory.used, memory.free = gpu.total, gpu.used, gpu.total - gpu.used
        memory.reserved = 0
        return SUCCESS

    def nvmlDeviceGetMemoryInfo(self, handle: Any, memory_ref: Any) -> int:
        self.calls.append("memory_v1")
        gpu = self.gpus[_handle_index(handle)]
        memory = _target(memory_ref)
        memory.total, memory.used, memory.free = gpu.total, gpu.used, gpu.total - gpu.used
        return SUCCESS

    def nvmlDeviceGetUtilizationRates(self, handle: Any, util_ref: Any) -> int:
        gpu = self.gpus[_handle_index(handle)]
        util = _target(util_ref)
        util.gpu, util.memory = gpu.util_gpu, gpu.util_memory
        return SUCCESS

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: Any, count_ref: Any,
                                                processes: Any) -> int:
        self.calls.append("processes")
        gpu = self.gpus[_handle_index(handle)]
        count = _target(count_ref)
        if not gpu.processes:
            count.value = 0
            return SUCCESS
        if processes is None:
            count.value = len(gpu.processes)
            return INSUFFICIENT_SIZE
        for i, (pid, used) in enumerate(gpu.processes):
            processes[i].pid = pid
            processes[i].usedGpuMemory = used
        count.value = len(gpu.processes)
        return SUCCESS


@contextlib.contextmanager
def installed(lib: FakeNvmlLib) -> Iterator[FakeNvmlLib]:
    """Make ``pynvml`` talk to ``lib`` instead of loading the real library."""
    saved = pynvml.nvmlLib
    pynvml.nvmlLib = lib
    pynvml._nvmlGetFunctionPointer_cache.clear()
    pynvml.NVMLError._errcode_to_string.clear()
    try:
        yield lib
    finally:
        pynvml.nvmlLib = saved
        pynvml._nvmlGetFunctionPointer_cache.clear()
        pynvml.NVMLError._errcode_to_string.clear()
