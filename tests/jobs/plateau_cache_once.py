"""The CNN job with a cache filled once: the seed's plateau, in the data phase.

The data phase looks up an augmentation table by ``step % 8``; a missing table is made and
kept (1 Mi float32 = exactly 4 MiB). The first eight steps fill the cache (32 MiB in all);
every later step finds its table and adds nothing. Memory acquired once and then constant: a
plateau on the path that filled it (``train / step / data``), never a leak.
Truth: plateau_cache_once.truth.json.

    python tests/jobs/plateau_cache_once.py WORKDIR
"""

from __future__ import annotations

from typing import Any

import torch
from jobkit import cnn_setup, train, workdir_from_argv

TABLES = 8
TABLE_ELEMENTS = 1 << 20  # float32: 4 MiB a table
#: slot -> augmentation table, filled on first use and never cleared
AUGMENT_TABLES: dict[int, torch.Tensor] = {}


def augment_table(step: int, batch: Any) -> None:
    slot = step % TABLES
    table = AUGMENT_TABLES.get(slot)
    if table is None:
        generator = torch.Generator().manual_seed(slot)
        table = AUGMENT_TABLES[slot] = torch.randn(TABLE_ELEMENTS, generator=generator)
    inputs, _labels = batch
    inputs.add_(table[: inputs[0].numel()].view_as(inputs[0]), alpha=0.01)


if __name__ == "__main__":
    train("plateau_cache_once", workdir_from_argv(), cnn_setup, in_data=augment_table)
