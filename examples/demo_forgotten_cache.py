"""Scenario A, the forgotten search cache: every run keeps its 5,000 records in a global dict.

Expected verdict: ``leaking`` (the end-of-run memory grows by a few MiB per run, in a line).
"""

from __future__ import annotations

from scenario_common import fetch_records, run_scenario

CACHE: dict[int, list[dict[str, str]]] = {}


def task(run: int) -> None:
    records = fetch_records(5000, run)
    CACHE[run] = records  # "to optimise the next run", and never cleared


if __name__ == "__main__":
    run_scenario("forgotten_cache", task)
