"""What the corpus jobs share: two small models, synthetic data, the annotated loop, a raw log.

Every job is a real (small) PyTorch program: a ``DataLoader`` with two worker processes, a
real optimizer with its state, an evaluation under ``torch.no_grad()`` every
:data:`EVAL_EVERY` steps and a checkpoint written with ``torch.save``. The annotated loop
(:func:`train`) marks its phases the way the README shows::

    train
      step (step=i, a trace root by its name)
        data, forward, backward, optimizer
      evaluate   (after every EVAL_EVERY-th step, under torch.no_grad())
      checkpoint (after every CHECKPOINT_EVERY-th step)

A job plants its fault through the hooks of :func:`train` (``in_data``, ``in_forward``,
``in_step``), so the fault is the only difference from the clean job.

Beside memspan's own telemetry each job writes ``job_log.json`` in its work directory: the
process's RSS read from ``/proc/self/statm`` at the end of every step (outside memspan), and
what ran. The tests use it to check that a job did what its truth file says (a clean job is
flat, a leak grows by its planted size) before they judge memspan's conclusions.

This module never imports memspan at import time: the un-annotated job uses it too.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

STEPS = 200
BATCH = 32
EVAL_EVERY = 50
EVAL_BATCHES = 5
CHECKPOINT_EVERY = 100
WORKERS = 2
SEED = 0

PAGE = os.sysconf("SC_PAGE_SIZE")

# One compute thread: beside two loader workers on a small CI machine (2 cores), more intra-op
# threads oversubscribe the cores and make every step ten times slower.
torch.set_num_threads(1)

#: bytes of the CNN's first activation for one batch: BATCH x 16 channels x 32 x 32 float32
CNN_CONV1_ACTIVATION_BYTES = BATCH * 16 * 32 * 32 * 4  # 2 MiB
#: bytes of the CNN's fc1 weight (128 x 2048 float32)
CNN_FC1_WEIGHT_BYTES = 128 * 2048 * 4  # 1 MiB


def rss_bytes() -> int:
    """This process's resident set size, from the kernel (no memspan involved)."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * PAGE


def workdir_from_argv() -> Path:
    if len(sys.argv) < 2:
        raise SystemExit(f"usage: {sys.argv[0]} WORKDIR")
    path = Path(sys.argv[1]).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def configure_memspan(job: str, workdir: Path) -> Any:
    """``memspan.configure`` as the README shows, into ``workdir``."""
    import memspan

    return memspan.configure(service_name=job, output_dir=str(workdir / "memspan-out"),
                             dump_dir=str(workdir / "oom_dumps"))


# -- data ----------------------------------------------------------------------------------
class SyntheticImages(Dataset[tuple[torch.Tensor, int]]):
    """``count`` 3x32x32 images, each drawn from its own seeded generator: the same data on
    every run and in every worker. The class is a fixed function of the index, and the image
    carries a class-dependent offset, so the model has something to learn."""

    def __init__(self, count: int, seed: int) -> None:
        self.count = count
        self.seed = seed

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = (index * 7) % 10
        image = torch.randn(3, 32, 32, generator=generator) + 0.1 * label
        return image, label


class SyntheticSequences(Dataset[tuple[torch.Tensor, int]]):
    """``count`` token sequences of length 32 over a vocabulary of 1000; the label is decided by
    which half of the vocabulary dominates the first tokens."""

    def __init__(self, count: int, seed: int, length: int = 32, vocab: int = 1000) -> None:
        self.count, self.seed, self.length, self.vocab = count, seed, length, vocab

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        tokens = torch.randint(0, self.vocab, (self.length,), generator=generator)
        label = int((tokens[:8] >= self.vocab // 2).sum() >= 4)
        return tokens, label


def train_loader(dataset: Dataset[Any], batches: int = STEPS) -> DataLoader[Any]:
    """A shuffled loader with two worker processes, exactly ``batches`` batches long."""
    generator = torch.Generator().manual_seed(SEED)
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=WORKERS,
                      generator=generator, drop_last=True)


def eval_loader(dataset: Dataset[Any]) -> DataLoader[Any]:
    return DataLoader(dataset, batch_size=BATCH, shuffle=False)


# -- models --------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """Two conv blocks and two linear layers (about 268 k parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 8 * 8, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv1(x)))  # conv1's output: BATCH x 16 x 32 x 32
        x = self.pool(torch.relu(self.conv2(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class SmallTransformer(nn.Module):
    """An embedding, a 2-layer ``nn.TransformerEncoder`` (d_model 64, 4 heads) and a head."""

    def __init__(self, vocab: int = 1000, d_model: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.position = nn.Parameter(torch.zeros(1, 32, d_model))
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=128,
                                           dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.embed(tokens) + self.position)
        return self.head(hidden.mean(dim=1))


def cnn_setup() -> tuple[nn.Module, torch.optim.Optimizer, Dataset[Any], Dataset[Any], bool]:
    """The CNN job: model, SGD with momentum (real per-parameter state), train and eval data."""
    torch.manual_seed(SEED)
    model = SmallCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return (model, optimizer, SyntheticImages(STEPS * BATCH, seed=1),
            SyntheticImages(EVAL_BATCHES * BATCH, seed=2), False)


def transformer_setup() -> tuple[nn.Module, torch.optim.Optimizer, Dataset[Any], Dataset[Any],
                                 bool]:
    """The transformer job: AdamW (two state tensors per parameter), zero_grad(set_to_none)."""
    torch.manual_seed(SEED)
    model = SmallTransformer()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01)
    return (model, optimizer, SyntheticSequences(STEPS * BATCH, seed=1),
            SyntheticSequences(EVAL_BATCHES * BATCH, seed=2), True)


# -- the raw log ---------------------------------------------------------------------------
class JobLog:
    """What the job itself saw, written to ``workdir/job_log.json`` (outside memspan)."""

    def __init__(self, workdir: Path, job: str) -> None:
        self.path = workdir / "job_log.json"
        self.data: dict[str, Any] = {"job": job, "pid": os.getpid(), "steps": 0,
                                     "rss_end_of_step": [], "evals": 0, "eval_batches": 0,
                                     "checkpoints": 0, "started_ns": time.time_ns()}

    def step_done(self) -> None:
        self.data["steps"] += 1
        self.data["rss_end_of_step"].append(rss_bytes())

    def write(self, **extra: Any) -> None:
        self.data.update(extra)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data))
        os.replace(temporary, self.path)


# -- the annotated loop --------------------------------------------------------------------
Hook = Callable[[int, Any], None]


def evaluate(model: nn.Module, loader: DataLoader[Any], log: JobLog) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for inputs, labels in loader:
            correct += int((model(inputs).argmax(dim=1) == labels).sum())
            total += len(labels)
            log.data["eval_batches"] += 1
    model.train()
    log.data["evals"] += 1
    return correct / max(1, total)


def train(job: str, workdir: Path, setup: Callable[[], tuple[nn.Module, torch.optim.Optimizer,
                                                             Dataset[Any], Dataset[Any], bool]],
          *, in_data: Hook | None = None, in_forward: Hook | None = None,
          in_step: Hook | None = None, steps: int = STEPS, log: JobLog | None = None) -> JobLog:
    """The annotated training loop (see the module docstring). Hooks run inside their phase:
    ``in_data(step, (inputs, labels))``, ``in_forward(step, (model, inputs))``,
    ``in_step(step, model)`` (in the step, after the optimizer phase). An exception from a
    hook propagates out of every phase to the caller, as in any job."""
    import memspan

    configure_memspan(job, workdir)
    model, optimizer, train_data, eval_data, set_to_none = setup()
    loss_fn = nn.CrossEntropyLoss()
    evaluation = eval_loader(eval_data)
    checkpoints = workdir / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    log = log or JobLog(workdir, job)
    model.train()
    with memspan.phase("train", model=type(model).__name__):
        batches = iter(train_loader(train_data))
        for step in range(steps):
            with memspan.phase("step", step=step):
                with memspan.phase("data"):
                    inputs, labels = next(batches)
                    if in_data is not None:
                        in_data(step, (inputs, labels))
                with memspan.phase("forward"):
                    if in_forward is not None:
                        in_forward(step, (model, inputs))
                    loss = loss_fn(model(inputs), labels)
                with memspan.phase("backward"):
                    loss.backward()
                with memspan.phase("optimizer"):
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=set_to_none)
                if in_step is not None:
                    in_step(step, model)
            log.step_done()
            if (step + 1) % EVAL_EVERY == 0:
                with memspan.phase("evaluate", step=step):
                    log.data.setdefault("accuracy", []).append(evaluate(model, evaluation, log))
            if (step + 1) % CHECKPOINT_EVERY == 0:
                with memspan.phase("checkpoint", step=step):
                    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                "step": step}, checkpoints / "last.pt")
                    log.data["checkpoints"] += 1
        del batches
    log.write(finished_ns=time.time_ns(), final_loss=loss.item())
    memspan.shutdown()
    return log
