"""CPU time per sampler tick, and the share of one core it takes at 100 ms and 10 ms.

Rows for host-only sources (host RSS + cgroup) and host + torch allocator (fake CUDA stats
for two devices, the same code path a GPU takes). Target: < 0.5 % of one core at 100 ms.
"""

from __future__ import annotations

import sys
import time

from _table import Row, report

from fakes import FakeCudaApi
from memspan.sampling import Sampler
from memspan.sources import CgroupMemorySource, HostMemorySource, TorchAllocatorSource


def cpu_per_tick_us(sampler: Sampler, ticks: int) -> float:
    started = time.process_time()
    for _ in range(ticks):
        sampler.sample_once()
    return (time.process_time() - started) / ticks * 1e6


def main() -> None:
    ticks = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
    host_only = Sampler([HostMemorySource(), CgroupMemorySource()])
    api = FakeCudaApi(devices=2)
    api.allocate(1 << 30)
    with_torch = Sampler([HostMemorySource(), CgroupMemorySource(), TorchAllocatorSource(api)])
    host_us = min(cpu_per_tick_us(host_only, ticks) for _ in range(3))
    torch_us = min(cpu_per_tick_us(with_torch, ticks) for _ in range(3))
    rows = []
    for label, us in (("host+cgroup", host_us), ("host+cgroup+torch(2 fake GPUs)", torch_us)):
        rows.append(Row(f"{label}: CPU per tick", us, "us"))
        for interval_ms in (100, 10):
            share = us / (interval_ms * 1000) * 100
            target = "< 0.5 %" if interval_ms == 100 else ""
            rows.append(Row(f"{label}: core share at {interval_ms} ms", share, "%", target,
                            None, share < 0.5 if interval_ms == 100 else None))
    report("sampler_cost", rows)


if __name__ == "__main__":
    main()
