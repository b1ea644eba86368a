"""Scenario B, the lean pipeline: only the needed fields are kept, and cleared after use.

Expected verdict: ``leak-free``.
"""

from __future__ import annotations

from scenario_common import fetch_records, run_scenario

WORKING: list[str] = []


def task(run: int) -> None:
    WORKING.extend(record["id"] for record in fetch_records(5000, run))  # surgical filtering
    WORKING.clear()


if __name__ == "__main__":
    # One unaudited run first, as a worker's warm-up would: the process's allocator keeps the
    # arenas the first batch needed (RSS it reuses, not memory the pipeline holds).
    run_scenario("clean_execution", task, warm_up=lambda: task(-1))
