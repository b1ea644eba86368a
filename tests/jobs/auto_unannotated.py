"""The CNN loop with no memspan call at all, for ``opentelemetry-instrument``'s auto phases.

The textbook loop: 200 training iterations from a DataLoader with two workers (forward, loss,
``backward()``, ``optimizer.step()``, ``zero_grad()``), and every 50 iterations an evaluation
of 5 batches with ``model.eval()`` under ``torch.no_grad()``, then a checkpoint every 100.
Run as ``opentelemetry-instrument python tests/jobs/auto_unannotated.py WORKDIR`` with the
telemetry sent to files (``OTEL_TRACES_EXPORTER=memspan_file``...). A correct tool makes one
auto ``step`` per training iteration (200), each spanning the whole iteration including its
``optimizer.step``, and no training step of the 20 evaluation batches.
Truth: auto_unannotated.truth.json.
"""

from __future__ import annotations

import time

import torch
from jobkit import (
    CHECKPOINT_EVERY,
    EVAL_EVERY,
    STEPS,
    JobLog,
    cnn_setup,
    eval_loader,
    train_loader,
    workdir_from_argv,
)
from torch import nn


def main() -> None:
    workdir = workdir_from_argv()
    log = JobLog(workdir, "auto_unannotated")
    model, optimizer, train_data, eval_data, _ = cnn_setup()
    loss_fn = nn.CrossEntropyLoss()
    evaluation = eval_loader(eval_data)
    checkpoints = workdir / "checkpoints"
    checkpoints.mkdir(exist_ok=True)
    model.train()
    for step, (inputs, labels) in enumerate(train_loader(train_data)):
        loss = loss_fn(model(inputs), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        log.step_done()
        if (step + 1) % EVAL_EVERY == 0:
            model.eval()
            with torch.no_grad():
                for eval_inputs, _eval_labels in evaluation:
                    model(eval_inputs)
                    log.data["eval_batches"] += 1
            model.train()
            log.data["evals"] += 1
        if (step + 1) % CHECKPOINT_EVERY == 0:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                       checkpoints / "last.pt")
            log.data["checkpoints"] += 1
    assert log.data["steps"] == STEPS
    log.write(finished_ns=time.time_ns(), final_loss=loss.item())


if __name__ == "__main__":
    main()
