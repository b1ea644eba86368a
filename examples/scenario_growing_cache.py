"""The forgotten cache that grows: every task keeps its own 5,000 records in a global dict.

Expected verdict: ``leaking`` (each run holds a few MiB more than the one before, in a line).
"""

from __future__ import annotations

from scenario_common import fetch_records, run_scenario

CACHE: dict[int, list[dict[str, str]]] = {}


def task(run: int) -> None:
    CACHE[run] = fetch_records(5000, run)  # keyed by run: a new entry every time


if __name__ == "__main__":
    run_scenario("growing_cache", task)
