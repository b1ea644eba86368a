"""Scenario A, the forgotten search cache: the first task pulls 5,000 records from "Oracle"
into a global dict "to optimise the next run" and nobody ever clears it. Later tasks find
the cache filled and add 0 MB.

Expected verdict: ``plateau`` with the CRITICAL BLOAT alert: the few MiB the cache holds are
all the task ever needed, and they are never given back.
"""

from __future__ import annotations

from scenario_common import fetch_records, run_scenario

CACHE: dict[str, list[dict[str, str]]] = {}


def task(run: int) -> None:
    if "orders" not in CACHE:
        CACHE["orders"] = fetch_records(5000, run)  # filled once, never cleared
    _ = len(CACHE["orders"])


if __name__ == "__main__":
    run_scenario("forgotten_cache", task)
