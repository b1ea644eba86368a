"""Shared by the audit scenarios: a fake "Oracle" fetch, and running a task under memspan.

Each scenario runs one task several times as the phase ``sync_task``, then writes the HTML
audit report with :func:`memspan.report.generate_report` (``memspan report`` does the same
from the command line) and prints the verdict with its evidence.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import memspan
from memspan.report import generate_report


def fetch_records(count: int, run: int) -> list[dict[str, str]]:
    """``count`` records of about 1 KiB each, unique per run (like rows from a database)."""
    return [{"id": f"{run}-{i}", "payload": f"{run}:{i}:" + "x" * 1000, "owner": "ops"}
            for i in range(count)]


def run_scenario(name: str, task: Callable[[int], None], runs: int = 8,
                 warm_up: Callable[[], None] | None = None) -> str:
    """Run ``task`` ``runs`` times, each in a ``sync_task`` phase, and print the verdict.

    ``warm_up`` runs once after memspan has started and outside any phase, as a worker's
    warm-up would: the allocator's arenas it leaves are reused memory, not memory held.
    With it, one ``warm_up`` phase is exported before the runs, so the exporter's first
    batch is part of the warm-up too.
    """
    output = os.environ.get("MEMSPAN_OUTPUT_DIR", f"memspan-out-{name}")
    memspan.configure(service_name=name, output_dir=output, export_interval_s=60)
    if warm_up is not None:
        warm_up()
        # the exporters' first batch (a new thread's allocator arena) is warm-up too
        with memspan.phase("warm_up"):
            pass
        memspan.get_tracker().flush_providers()
    for run in range(runs):
        with memspan.phase("sync_task", run=run):
            task(run)
    memspan.shutdown()
    result = generate_report(input_dir=output, dump_dir=os.path.join(output, "no-dumps"),
                             suffix=name)
    verdict = result.verdicts["sync_task"]
    print(f"{name}: sync_task verdict {verdict.verdict} ({verdict.badge})")
    print(f"evidence: {verdict.evidence}")
    print(f"report: {result.html_path}")
    sys.stdout.flush()
    return verdict.verdict
