"""Memory sources: each reads one kind of memory behind the :class:`MemorySource` protocol."""

from memspan.sources.base import (
    DeviceIdentity,
    MemorySource,
    Reading,
    SourceStatus,
)
from memspan.sources.cgroup import CgroupMemorySource
from memspan.sources.host import HostMemorySource
from memspan.sources.nvml import NvmlSource
from memspan.sources.torch_allocator import TorchAllocatorSource, TorchCudaApi

__all__ = [
    "CgroupMemorySource",
    "DeviceIdentity",
    "HostMemorySource",
    "MemorySource",
    "NvmlSource",
    "Reading",
    "SourceStatus",
    "TorchAllocatorSource",
    "TorchCudaApi",
]
