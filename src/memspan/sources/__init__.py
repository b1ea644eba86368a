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

#: The sources a session builds by default, in sampling order; their catalogue rows are
#: always part of a session's metric catalogue.
STANDARD_SOURCES: tuple[type[MemorySource], ...] = (
    HostMemorySource, CgroupMemorySource, TorchAllocatorSource, NvmlSource)

__all__ = [
    "STANDARD_SOURCES",
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
