"""A clean CNN job: synthetic images, DataLoader(num_workers=2), eval every 50 steps, checkpoints.

Nothing is kept from one step to the next beyond the model, its gradients and the optimizer's
momentum: after the first steps (allocator and worker warm-up) the process's RSS is flat.
Truth: cnn_clean.truth.json.

    python tests/jobs/cnn_clean.py WORKDIR
"""

from __future__ import annotations

from jobkit import cnn_setup, train, workdir_from_argv

if __name__ == "__main__":
    train("cnn_clean", workdir_from_argv(), cnn_setup)
