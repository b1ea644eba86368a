"""The CNN job with a tensor kept across steps: the fc1 weight after every step, "for analysis".

In the step itself, after the optimizer phase and outside every child phase, the job appends
a copy of ``fc1.weight`` (128 x 2048 float32 = exactly 1 MiB) to a list that lives as long as
the run. The memory is allocated and kept by the step's own code, so the leak belongs to the
path ``train / step``; none of its child phases (data, forward, backward, optimizer) keeps
anything. Truth: leak_across_steps.truth.json.

    python tests/jobs/leak_across_steps.py WORKDIR
"""

from __future__ import annotations

import torch
from jobkit import cnn_setup, train, workdir_from_argv
from torch import nn

#: fc1's weight after each step (the leak)
WEIGHT_HISTORY: list[torch.Tensor] = []


def keep_weights(step: int, model: nn.Module) -> None:
    WEIGHT_HISTORY.append(model.fc1.weight.detach().clone())


if __name__ == "__main__":
    train("leak_across_steps", workdir_from_argv(), cnn_setup, in_step=keep_weights)
