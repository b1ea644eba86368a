"""Device memory and utilisation from NVML (``nvidia-ml-py``, module ``pynvml``).

Invariants:

- NVML is initialised once, lazily, on the first probe or sample, and again in a forked
  child (which never uses the parent's handles).
- No driver, no library, or a driver/library mismatch make the source unavailable with the
  reason, logged once at INFO; the sampler then stops asking it.
- Memory info uses the v2 call (which separates driver-reserved memory) and falls back to v1.
- This process's own usage comes from the running-process list, read at a lower cadence
  (every ``process_every`` samples) because it is the slowest NVML call.
- Devices are identified by UUID (``hw.id``) and PCI bus id, never by assuming NVML and CUDA
  enumerate devices in the same order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from memspan import names
from memspan.metric_catalogue import BYTES, ONE, Cadence, InstrumentKind, MetricRow
from memspan.sources.base import DeviceIdentity, Reading, SourceStatus

_logger = logging.getLogger(__name__)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class NvmlSource:
    """``hw.gpu.memory.*``, ``hw.gpu.utilization`` and this process's GPU memory via NVML."""

    name = "nvml"
    cadence: Cadence = Cadence.SLOW  # NVML calls are slow: sampled every slow_interval
    metrics: tuple[MetricRow, ...] = (
        MetricRow(names.GPU_MEMORY_USAGE, InstrumentKind.UP_DOWN_COUNTER, BYTES,
                  "GPU memory in use (NVML)"),
        MetricRow(names.GPU_MEMORY_LIMIT, InstrumentKind.UP_DOWN_COUNTER, BYTES,
                  "GPU memory capacity (NVML)"),
        MetricRow(names.GPU_MEMORY_UTILIZATION, InstrumentKind.GAUGE, ONE,
                  "Fraction of GPU memory in use (NVML)"),
        MetricRow(names.GPU_UTILIZATION, InstrumentKind.GAUGE, ONE,
                  "Fraction of time the GPU was busy (NVML)"),
        MetricRow(names.GPU_PROCESS_MEMORY_USAGE, InstrumentKind.UP_DOWN_COUNTER, BYTES,
                  "GPU memory this process uses (NVML)"),
    )

    def __init__(self, nvml: ModuleType | None = None, *, process_every: int = 5) -> None:
        # Imported here, on the thread building the session, never first on the sampler
        # thread: a fork while that thread held the import lock would hang the child.
        self._nvml = nvml if nvml is not None else _import_pynvml()
        self._process_every = max(1, process_every)
        self._initialized = False
        self._unavailable_reason: str | None = None
        self._handles: list[tuple[Any, DeviceIdentity]] = []
        self._pid = os.getpid()
        self._samples = 0
        self._process_usage: dict[str, int] = {}

    def _module(self) -> ModuleType | None:
        return self._nvml

    def _ensure_initialized(self) -> bool:
        if self._pid != os.getpid():
            self.after_fork()
        if self._initialized:
            return True
        if self._unavailable_reason is not None:
            return False
        nvml = self._module()
        if nvml is None:
            return self._mark_unavailable("nvidia-ml-py (module pynvml) is not installed")
        try:
            nvml.nvmlInit()
            handles = []
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                handles.append((handle, self._identify(nvml, index, handle)))
        except nvml.NVMLError as error:
            return self._mark_unavailable(f"NVML unavailable: {error}")
        except OSError as error:
            return self._mark_unavailable(f"NVML library could not be loaded: {error}")
        self._handles = handles
        self._initialized = True
        return True

    @staticmethod
    def _identify(nvml: ModuleType, index: int, handle: Any) -> DeviceIdentity:
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        name = _text(nvml.nvmlDeviceGetName(handle))
        try:
            pci = _text(nvml.nvmlDeviceGetPciInfo(handle).busId)
        except nvml.NVMLError:
            pci = ""
        return DeviceIdentity(
            key=f"nvml:{index}", hw_id=uuid, name=name, vendor="nvidia", pci_bus_id=pci
        )

    def _mark_unavailable(self, reason: str) -> bool:
        self._unavailable_reason = reason
        _logger.info("memspan: NVML source disabled: %s", reason)
        return False

    def probe(self) -> SourceStatus:
        if self._ensure_initialized():
            return SourceStatus(True, f"{len(self._handles)} NVML device(s)")
        return SourceStatus(False, self._unavailable_reason or "NVML unavailable")

    def devices(self) -> Sequence[DeviceIdentity]:
        if not self._ensure_initialized():
            return ()
        return [identity for _, identity in self._handles]

    def capabilities(self) -> frozenset[str]:
        return frozenset(
            {
                names.GPU_MEMORY_USAGE,
                names.GPU_MEMORY_LIMIT,
                names.GPU_MEMORY_UTILIZATION,
                names.GPU_UTILIZATION,
                names.GPU_PROCESS_MEMORY_USAGE,
            }
        )

    def memory_info(self, handle: Any) -> tuple[int, int, int]:
        """(total, used, free) bytes, v2 call first."""
        nvml = self._module()
        assert nvml is not None
        try:
            info = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
        except (nvml.NVMLError, AttributeError, TypeError):
            info = nvml.nvmlDeviceGetMemoryInfo(handle)
        return int(info.total), int(info.used), int(info.free)

    def sample(self) -> Sequence[Reading]:
        if not self._ensure_initialized():
            return ()
        nvml = self._module()
        assert nvml is not None
        refresh_processes = self._samples % self._process_every == 0
        self._samples += 1
        out: list[Reading] = []
        for handle, identity in self._handles:
            attrs = identity.attributes()
            total, used, _free = self.memory_info(handle)
            out.append(Reading(names.GPU_MEMORY_USAGE, used, attrs))
            out.append(Reading(names.GPU_MEMORY_LIMIT, total, attrs))
            if total > 0:
                out.append(Reading(names.GPU_MEMORY_UTILIZATION, used / total, attrs))
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            out.append(Reading(names.GPU_UTILIZATION, int(util.gpu) / 100.0, attrs))
            if refresh_processes:
                self._refresh_process_usage(nvml, handle, identity)
            usage = self._process_usage.get(identity.hw_id)
            if usage is not None:
                out.append(Reading(names.GPU_PROCESS_MEMORY_USAGE, usage, attrs))
        return out

    def _refresh_process_usage(self, nvml: ModuleType, handle: Any, identity: DeviceIdentity) -> None:
        try:
            processes = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
        except nvml.NVMLError:
            self._process_usage.pop(identity.hw_id, None)
            return
        pid = os.getpid()
        mine = [p.usedGpuMemory for p in processes if p.pid == pid and p.usedGpuMemory is not None]
        if mine:
            self._process_usage[identity.hw_id] = int(sum(mine))
        else:
            self._process_usage.pop(identity.hw_id, None)

    def snapshot(self) -> dict[str, Any]:
        if not self._ensure_initialized():
            return {"available": False, "reason": self._unavailable_reason}
        nvml = self._module()
        assert nvml is not None
        devices: dict[str, Any] = {}
        for handle, identity in self._handles:
            entry: dict[str, Any] = {"hw_id": identity.hw_id, "name": identity.name,
                                     "pci_bus_id": identity.pci_bus_id}
            try:
                total, used, free = self.memory_info(handle)
                entry.update(total_bytes=total, used_bytes=used, free_bytes=free)
                entry["processes"] = [
                    {"pid": int(p.pid), "used_bytes": p.usedGpuMemory}
                    for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle)
                ]
            except nvml.NVMLError as error:
                entry["error"] = str(error)
            devices[identity.key] = entry
        return {"available": True, "devices": devices}

    def after_fork(self) -> None:
        """Forget the parent's handles; the child initialises NVML for itself."""
        self._pid = os.getpid()
        self._initialized = False
        self._handles = []
        self._process_usage = {}
        self._samples = 0

    def close(self) -> None:
        if self._initialized and self._pid == os.getpid():
            nvml = self._module()
            if nvml is not None:
                try:
                    nvml.nvmlShutdown()
                except nvml.NVMLError:
                    pass
        self._initialized = False
        self._handles = []


def _import_pynvml() -> ModuleType | None:
    """``nvidia-ml-py``'s module, or None where it is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    module: ModuleType = pynvml
    return module
