"""Scenario C, allocate once and hold: the first run loads a 128 MiB table that stays.

Expected verdict: ``plateau`` with the CRITICAL BLOAT alert (the table is all the task
ever needed, and it stays: memory stays high after the work, but does not keep growing).
"""

from __future__ import annotations

from scenario_common import run_scenario

TABLE: list[bytearray] = []


def task(run: int) -> None:
    if not TABLE:
        block = bytearray(128 * 1024 * 1024)
        block[::4096] = b"\x01" * len(block[::4096])  # touch every page: resident
        TABLE.append(block)


if __name__ == "__main__":
    run_scenario("plateau", task)
