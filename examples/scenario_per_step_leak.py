"""A per-step leak: each of 300 training steps keeps about 412 KiB (a tensor appended to a
history list "for debugging"), 130 MiB in all, while its working buffers are freed.

Expected verdict: ``leaking``; the growth per step is small, but the growth over all runs is
large and follows a straight line (R² 1.00).
"""

from __future__ import annotations

from scenario_common import run_scenario

HISTORY: list[bytes] = []
KEPT = 412 * 1024


def task(run: int) -> None:
    activations = bytes([run % 251]) * (2 * 1024 * 1024)  # working memory, freed after
    HISTORY.append(activations[:KEPT] + b"")  # the leak: a slice copied and kept
    del activations


if __name__ == "__main__":
    run_scenario("per_step_leak", task, runs=300)
