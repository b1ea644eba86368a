"""The CNN job with a leak planted in the data phase: a cache of converted batches keyed by step.

The data phase keeps each batch converted to float64 ("decoded once, to be reused") in a dict
keyed by the step number, so no entry is ever reused and none is ever dropped: 32 x 3 x 32 x
32 float64 = exactly 768 KiB more per step, in the ``data`` phase.
Truth: leak_data_cache.truth.json.

    python tests/jobs/leak_data_cache.py WORKDIR
"""

from __future__ import annotations

from typing import Any

import torch
from jobkit import cnn_setup, train, workdir_from_argv

#: step -> the batch as float64 (the leak: keyed by a value that never repeats)
DECODED: dict[int, torch.Tensor] = {}


def cache_batch(step: int, batch: Any) -> None:
    inputs, _labels = batch
    DECODED[step] = inputs.to(torch.float64)


if __name__ == "__main__":
    train("leak_data_cache", workdir_from_argv(), cnn_setup, in_data=cache_batch)
