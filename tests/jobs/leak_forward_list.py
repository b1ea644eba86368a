"""The CNN job with a leak planted in forward: a debugging hook keeps every training activation.

A forward hook on ``conv1`` appends a detached clone of its output (BATCH x 16 x 32 x 32
float32 = exactly 2 MiB) to a module-level list on every training forward (not in eval),
and nothing ever clears it: 2 MiB more is kept per step, in the ``forward`` phase. The
process's RSS grows by 2.2 to 3.1 MiB a step from run to run of this same code (the kept
clones fragment the heap between the step's transient 2 MiB buffers), so the truth of the
rate is the process's own measured growth.
Truth: leak_forward_list.truth.json.

    python tests/jobs/leak_forward_list.py WORKDIR
"""

from __future__ import annotations

from typing import Any

import torch
from jobkit import cnn_setup, train, workdir_from_argv
from torch import nn

#: every training activation of conv1 since the start (the leak)
SEEN_ACTIVATIONS: list[torch.Tensor] = []


def keep_activation(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
    if module.training:
        SEEN_ACTIVATIONS.append(output.detach().clone())


def setup() -> Any:
    model, *rest = cnn_setup()
    model.conv1.register_forward_hook(keep_activation)
    return (model, *rest)


if __name__ == "__main__":
    train("leak_forward_list", workdir_from_argv(), setup)
