"""A 2-rank CPU job: every rank exports its own spans with its rank on the resource.

    torchrun --standalone --nproc_per_node=2 examples/torchrun_gloo.py

Each rank calls ``memspan.configure()``; the resource detector reads ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE`` from torchrun, so every span and metric carries
``memspan.rank``. Aggregation across ranks is the OTel Collector's job, not memspan's.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn

import memspan


def main() -> None:
    memspan.configure(service_name="torchrun-gloo", export_interval_s=60)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = nn.Linear(32, 32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with memspan.phase("train", world_size=dist.get_world_size()):
        for step in range(3):
            with memspan.phase("step", step=step):
                loss = model(torch.randn(8, 32)).pow(2).mean()
                loss.backward()
                with memspan.phase("allreduce"):
                    for parameter in model.parameters():
                        assert parameter.grad is not None
                        dist.all_reduce(parameter.grad)
                optimizer.step()
                optimizer.zero_grad()
    dist.barrier()
    dist.destroy_process_group()
    memspan.shutdown()
    print(f"rank {rank} done (pid {os.getpid()})")


if __name__ == "__main__":
    main()
