"""The PyTorch caching allocator (CUDA, ROCm through ``torch.cuda``, XPU), per device.

Invariants:

- memspan never imports torch: the real API is looked up in ``sys.modules``, so a program
  that does not use torch never pays for it, and one that does is read once it imported it.
- Nothing is read until the backend reports ``is_initialized()``: reading earlier (or calling
  ``mem_get_info``/``get_device_properties``) would create a CUDA context behind the user's
  back. Peaks are never reset.
- One ``memory_stats_as_nested_dict`` call per device per read: each flat accessor
  (``memory_allocated()``...) rebuilds and sorts the whole stats dict.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from memspan import names
from memspan.metric_catalogue import BYTES, ONE, Cadence, InstrumentKind, MetricRow
from memspan.names import EventType
from memspan.sources.base import DeviceIdentity, Reading, SourceStatus


class TorchCudaApi(Protocol):
    """The seam to the allocator: the few torch calls memspan makes."""

    backend: str

    def available(self) -> bool:
        """Whether the backend module is importable/imported at all."""
        ...

    def is_initialized(self) -> bool: ...

    def device_count(self) -> int: ...

    def current_device(self) -> int: ...

    def memory_stats_nested(self, device: int) -> Mapping[str, Any]: ...

    def device_identity(self, device: int) -> DeviceIdentity: ...

    def memory_snapshot(self) -> Any:
        """The memory-history snapshot, or None when history recording is off."""
        ...


class RealTorchCuda:
    """``torch.cuda`` (or ``torch.xpu``) as already imported by the user's program."""

    def __init__(self, backend: str = "cuda") -> None:
        self.backend = backend

    def _module(self) -> Any:
        torch = sys.modules.get("torch")
        if torch is None:
            return None
        return getattr(torch, self.backend, None)

    def available(self) -> bool:
        return self._module() is not None

    def is_initialized(self) -> bool:
        module = self._module()
        return bool(module is not None and module.is_initialized())

    def device_count(self) -> int:
        module = self._module()
        return int(module.device_count()) if module is not None else 0

    def current_device(self) -> int:
        return int(self._module().current_device())

    def memory_stats_nested(self, device: int) -> Mapping[str, Any]:
        stats: Mapping[str, Any] = self._module().memory_stats_as_nested_dict(device)
        return stats

    def device_identity(self, device: int) -> DeviceIdentity:
        module = self._module()
        props = module.get_device_properties(device)
        uuid = str(getattr(props, "uuid", "") or "")
        if uuid and self.backend == "cuda" and not uuid.startswith(("GPU-", "MIG-")):
            uuid = f"GPU-{uuid}"
        torch = sys.modules["torch"]
        vendor = {"cuda": "amd" if getattr(torch.version, "hip", None) else "nvidia"}.get(
            self.backend, "intel"
        )
        pci = ""
        if hasattr(props, "pci_bus_id"):
            pci = "{:08X}:{:02X}:{:02X}.0".format(
                int(getattr(props, "pci_domain_id", 0)),
                int(props.pci_bus_id),
                int(getattr(props, "pci_device_id", 0)),
            )
        return DeviceIdentity(
            key=f"{self.backend}:{device}",
            hw_id=uuid or f"{self.backend}:{device}",
            name=str(getattr(props, "name", "")),
            vendor=vendor,
            pci_bus_id=pci,
            extra={"total_memory": int(getattr(props, "total_memory", 0))},
        )

    def memory_snapshot(self) -> Any:
        module = self._module()
        if module is None or not hasattr(module, "memory") or not self.is_initialized():
            return None
        return module.memory._snapshot()


@dataclass(frozen=True, slots=True)
class AllocatorFigures:
    """One device's allocator state at one moment, all in bytes (counters excepted)."""

    device: str
    allocated: int
    allocated_peak: int
    reserved: int
    reserved_peak: int
    active: int
    inactive_split: int
    requested: int
    alloc_retries: int
    ooms: int


def figures_from_stats(device: str, stats: Mapping[str, Any]) -> AllocatorFigures:
    """Index a nested stats dict once; missing keys read as 0 (the allocator's own default)."""

    def pool(key: str, field: str = "current") -> int:
        return int(stats.get(key, {}).get("all", {}).get(field, 0))

    return AllocatorFigures(
        device=device,
        allocated=pool("allocated_bytes"),
        allocated_peak=pool("allocated_bytes", "peak"),
        reserved=pool("reserved_bytes"),
        reserved_peak=pool("reserved_bytes", "peak"),
        active=pool("active_bytes"),
        inactive_split=pool("inactive_split_bytes"),
        requested=pool("requested_bytes"),
        alloc_retries=int(stats.get("num_alloc_retries", 0)),
        ooms=int(stats.get("num_ooms", 0)),
    )


class TorchAllocatorSource:
    """Allocated/reserved/active/inactive-split bytes and retry/OOM counters per device."""

    name = "torch"
    cadence: Cadence = Cadence.FAST
    metrics: tuple[MetricRow, ...] = (
        MetricRow(names.TORCH_ALLOCATED, InstrumentKind.UP_DOWN_COUNTER, BYTES,
                  "Bytes allocated to tensors by the torch allocator"),
        MetricRow(names.TORCH_RESERVED, InstrumentKind.UP_DOWN_COUNTER, BYTES,
                  "Bytes reserved by the torch caching allocator"),
        MetricRow(names.TORCH_ACTIVE, InstrumentKind.UP_DOWN_COUNTER, BYTES,
                  "Bytes in active allocator blocks"),
        MetricRow(names.TORCH_INACTIVE_SPLIT, InstrumentKind.UP_DOWN_COUNTER, BYTES,
                  "Bytes in inactive, non-releasable split blocks"),
        MetricRow(names.TORCH_ALLOC_RETRIES, InstrumentKind.COUNTER, ONE,
                  "Allocator retries after a cache flush", counter_event=EventType.ALLOC_RETRY),
        MetricRow(names.TORCH_OOMS, InstrumentKind.COUNTER, ONE,
                  "Out-of-memory errors raised by the torch allocator",
                  counter_event=EventType.ALLOCATOR_OOM),
        MetricRow(names.TORCH_ALLOCATED_WINDOW_PEAK, InstrumentKind.GAUGE, BYTES,
                  "Highest allocated bytes since the previous export", window_peak=True),
        MetricRow(names.TORCH_RESERVED_WINDOW_PEAK, InstrumentKind.GAUGE, BYTES,
                  "Highest reserved bytes since the previous export", window_peak=True),
    )

    def __init__(self, api: TorchCudaApi | None = None) -> None:
        self.api: TorchCudaApi = api if api is not None else RealTorchCuda()
        self._identities: dict[int, DeviceIdentity] = {}
        self._last_peaks: dict[int, tuple[int, int]] = {}

    def probe(self) -> SourceStatus:
        if not self.api.available():
            return SourceStatus(False, f"torch.{self.api.backend} is not imported")
        return SourceStatus(True, f"torch.{self.api.backend} (read once initialised)")

    def initialized(self) -> bool:
        """Cheap (phases ask on every entry); the seam answers False without torch."""
        return self.api.is_initialized()

    def identity(self, device: int) -> DeviceIdentity:
        identity = self._identities.get(device)
        if identity is None:
            identity = self.api.device_identity(device)
            self._identities[device] = identity
        return identity

    def series_attributes(self, device: int) -> tuple[tuple[str, str], ...]:
        """Metric attributes of one device's series: its memspan name and ``hw.id``."""
        identity = self.identity(device)
        return ((names.HW_ID, identity.hw_id), (names.MEMORY_DEVICE, identity.key))

    def devices(self) -> Sequence[DeviceIdentity]:
        if not self.initialized():
            return ()
        return [self.identity(i) for i in range(self.api.device_count())]

    def capabilities(self) -> frozenset[str]:
        return frozenset(
            {
                names.TORCH_ALLOCATED,
                names.TORCH_RESERVED,
                names.TORCH_ACTIVE,
                names.TORCH_INACTIVE_SPLIT,
                names.TORCH_ALLOC_RETRIES,
                names.TORCH_OOMS,
            }
        )

    def read_device(self, device: int) -> AllocatorFigures:
        """Fresh figures for one device (one nested stats call)."""
        return figures_from_stats(
            f"{self.api.backend}:{device}", self.api.memory_stats_nested(device)
        )

    def sample(self) -> Sequence[Reading]:
        if not self.initialized():
            return ()
        out: list[Reading] = []
        for index in range(self.api.device_count()):
            figures = self.read_device(index)
            attrs = self.series_attributes(index)
            out.extend(
                (
                    Reading(names.TORCH_ALLOCATED, figures.allocated, attrs),
                    Reading(names.TORCH_RESERVED, figures.reserved, attrs),
                    Reading(names.TORCH_ACTIVE, figures.active, attrs),
                    Reading(names.TORCH_INACTIVE_SPLIT, figures.inactive_split, attrs),
                    Reading(names.TORCH_ALLOC_RETRIES, figures.alloc_retries, attrs),
                    Reading(names.TORCH_OOMS, figures.ooms, attrs),
                )
            )
            # The allocator's high-water mark only rises; when it rose since the previous
            # tick, that new peak happened in between and is the exact window peak.
            last_alloc_peak, last_reserved_peak = self._last_peaks.get(index, (-1, -1))
            alloc_window = (
                figures.allocated_peak if figures.allocated_peak > last_alloc_peak >= 0
                else figures.allocated
            )
            reserved_window = (
                figures.reserved_peak if figures.reserved_peak > last_reserved_peak >= 0
                else figures.reserved
            )
            self._last_peaks[index] = (figures.allocated_peak, figures.reserved_peak)
            out.append(Reading(names.TORCH_ALLOCATED_WINDOW_PEAK, alloc_window, attrs))
            out.append(Reading(names.TORCH_RESERVED_WINDOW_PEAK, reserved_window, attrs))
        return out

    def snapshot(self) -> dict[str, Any]:
        if not self.initialized():
            return {"initialized": False}
        devices: dict[str, Any] = {}
        for index in range(self.api.device_count()):
            identity = self.identity(index)
            devices[identity.key] = {
                "hw_id": identity.hw_id,
                "name": identity.name,
                "memory_stats": _jsonable(self.api.memory_stats_nested(index)),
            }
        return {"initialized": True, "backend": self.api.backend, "devices": devices}

    def after_fork(self) -> None:
        """A forked child cannot use the parent's CUDA context; forget what was cached."""
        self._identities.clear()
        self._last_peaks.clear()

    def close(self) -> None:
        """Nothing is held open."""


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)
