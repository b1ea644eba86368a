"""A clean transformer job: a 2-layer nn.TransformerEncoder, AdamW, zero_grad(set_to_none=True).

The same loop as the CNN job (DataLoader with two workers, eval every 50 steps, checkpoints).
AdamW allocates its two state tensors per parameter in the first optimizer step and keeps
them (about 1.3 MiB): ordinary state, not a leak; gradients are freed every step and made
again by the next backward. Truth: transformer_clean.truth.json.

    python tests/jobs/transformer_clean.py WORKDIR
"""

from __future__ import annotations

from jobkit import train, transformer_setup, workdir_from_argv

if __name__ == "__main__":
    train("transformer_clean", workdir_from_argv(), transformer_setup)
