"""Fakes for what this machine lacks (a GPU), behind the same seams the real code uses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from memspan.sources.base import DeviceIdentity


class FakeCudaApi:
    """Plays ``torch.cuda`` for :class:`memspan.sources.TorchAllocatorSource`.

    Each device keeps allocator counters that tests move with :meth:`allocate`/:meth:`free`;
    the peak behaves like the caching allocator's (it only rises; nothing resets it).
    """

    backend = "cuda"

    def __init__(self, devices: int = 1, names: tuple[str, ...] = ("NVIDIA H100 80GB HBM3",),
                 initialized: bool = True) -> None:
        self.initialized = initialized
        self.device = 0
        self.calls: list[str] = []
        self.names = names
        self.state = [
            {"allocated": 0, "allocated_peak": 0, "reserved": 0, "reserved_peak": 0,
             "active": 0, "inactive_split": 0, "retries": 0, "ooms": 0}
            for _ in range(devices)
        ]

    def available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialized

    def device_count(self) -> int:
        return len(self.state)

    def current_device(self) -> int:
        return self.device

    def allocate(self, nbytes: int, device: int = 0) -> None:
        s = self.state[device]
        s["allocated"] += nbytes
        s["active"] += nbytes
        s["allocated_peak"] = max(s["allocated_peak"], s["allocated"])
        if s["allocated"] > s["reserved"]:
            s["reserved"] = s["allocated"]
            s["reserved_peak"] = max(s["reserved_peak"], s["reserved"])

    def free(self, nbytes: int, device: int = 0) -> None:
        s = self.state[device]
        s["allocated"] -= nbytes
        s["active"] -= nbytes

    def memory_stats_nested(self, device: int) -> Mapping[str, Any]:
        self.calls.append(f"memory_stats_nested({device})")
        s = self.state[device]
        return {
            "allocated_bytes": {"all": {"current": s["allocated"], "peak": s["allocated_peak"]}},
            "reserved_bytes": {"all": {"current": s["reserved"], "peak": s["reserved_peak"]}},
            "active_bytes": {"all": {"current": s["active"], "peak": s["active"]}},
            "inactive_split_bytes": {"all": {"current": s["inactive_split"], "peak": 0}},
            "requested_bytes": {"all": {"current": s["allocated"], "peak": 0}},
            "num_alloc_retries": s["retries"],
            "num_ooms": s["ooms"],
        }

    def device_identity(self, device: int) -> DeviceIdentity:
        self.calls.append(f"device_identity({device})")
        name = self.names[device % len(self.names)]
        return DeviceIdentity(key=f"cuda:{device}", hw_id=f"GPU-0000000{device}-fake",
                              name=name, vendor="nvidia", pci_bus_id=f"00000000:0{device}:00.0")

    def memory_snapshot(self) -> Any:
        return None
