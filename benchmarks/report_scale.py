"""``memspan report`` on 1,000,000 spans of input: time and peak RSS stay bounded.

Generates OTLP JSON lines for N phase spans (512 per line, the SDK's batch size) in a temp
directory, then builds the report in a child process and reads that child's peak RSS.
The row to watch is the peak RSS of 1,000,000 spans against 100,000: a streaming reader
keeps it nearly flat while the input grows tenfold.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from _table import Row, report

BATCH = 512


def attribute(key: str, value: object) -> dict[str, object]:
    if isinstance(value, str):
        return {"key": key, "value": {"stringValue": value}}
    return {"key": key, "value": {"intValue": str(value)}}


def generate(path: str, spans: int) -> int:
    base = 1_790_000_000_000_000_000
    with open(path, "w") as handle:
        for first in range(0, spans, BATCH):
            batch = []
            for i in range(first, min(spans, first + BATCH)):
                step = i % 4
                name, depth, spath = [("train", 1, "train"), ("step", 2, "train / step"),
                                      ("forward", 3, "train / step / forward"),
                                      ("backward", 3, "train / step / backward")][step]
                start = base + i * 1_000_000
                batch.append({
                    "traceId": f"{i:032x}", "spanId": f"{i:016x}", "name": name, "kind": 1,
                    "startTimeUnixNano": str(start), "endTimeUnixNano": str(start + 900_000),
                    "attributes": [attribute("memspan.phase.path", spath),
                                   attribute("memspan.phase.depth", depth),
                                   attribute("memspan.memory.device", "host"),
                                   attribute("memspan.memory.rss.start", 1 << 30),
                                   attribute("memspan.memory.rss.end", (1 << 30) + (i % 7) * 4096),
                                   attribute("memspan.memory.rss.peak", (1 << 30) + 65536)],
                })
            handle.write(json.dumps({"resourceSpans": [{"resource": {"attributes": []},
                                     "scopeSpans": [{"scope": {"name": "memspan"},
                                                     "spans": batch}]}]}) + "\n")
    return os.path.getsize(path)


def build_in_child(directory: str) -> tuple[float, int]:
    script = ("import sys; from memspan.report import build_report; "
              f"build_report({directory!r}, dump_dir={directory!r} + '/none', "
              f"out_dir={directory!r} + '/reports')")
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-c", script])
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"report failed with status {child.returncode}")
    return time.perf_counter() - started, usage.ru_maxrss * 1024


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [100_000, 1_000_000]
    rows = []
    results = {}
    for spans in sizes:
        directory = tempfile.mkdtemp(prefix="memspan-report-")
        try:
            size = generate(os.path.join(directory, "traces.jsonl"), spans)
            elapsed, peak = build_in_child(directory)
            results[spans] = peak
            rows.append(Row(f"{spans:,} spans ({size / 1e6:.0f} MB): time", elapsed, "s"))
            rows.append(Row(f"{spans:,} spans: peak RSS of the report process", peak / 2**20, "MiB"))
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    if len(results) >= 2:
        small, large = min(results), max(results)
        ratio = results[large] / results[small]
        rows.append(Row(f"peak RSS ratio {large:,} / {small:,} spans", ratio, "x", "< 1.5x",
                        ratio, ratio < 1.5))
    report("report_scale", rows)


if __name__ == "__main__":
    main()
