"""Fork-based DataLoader workers under auto phases, and shutdown with a blocked exporter."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from launcher_helpers import run_python

DATALOADER = textwrap.dedent("""
    import json, os
    import torch
    from torch.utils.data import DataLoader, Dataset
    import memspan
    from memspan.auto_phases import TorchAutoPhases

    tracker = memspan.configure(service_name="fork-test", export_interval_s=60)
    auto = TorchAutoPhases(memspan.get_tracker)
    auto.install()

    class Squares(Dataset):
        def __len__(self):
            return 16
        def __getitem__(self, index):
            with memspan.phase("load_item", index=index):  # runs in a forked worker
                return torch.tensor([index * index], dtype=torch.float32), os.getpid()

    loader = DataLoader(Squares(), batch_size=4, num_workers=2, multiprocessing_context="fork")
    pids = set()
    total = 0.0
    for values, worker_pids in loader:
        total += float(values.sum())
        pids.update(int(p) for p in worker_pids)
    auto.uninstall()
    memspan.shutdown()
    print(json.dumps({"total": total, "workers": len(pids - {os.getpid()})}))
""")


def test_fork_dataloader_workers_under_auto_phases(tmp_path: Path) -> None:
    result = run_python(DATALOADER, tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"total": float(sum(i * i for i in range(16))), "workers": 2}
    assert "Traceback" not in result.stderr
    names = set()
    for line in (tmp_path / "memspan-out/traces.jsonl").read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                names.update(s["name"] for s in ss["spans"])
    assert "dataloader.next" in names


BLOCKED = textwrap.dedent("""
    import threading, time
    from memspan.export.embedded import SpanLinesExporter
    never = threading.Event()
    def blocked_export(self, spans):
        never.wait()  # an exporter that hangs forever (a dead NFS mount, say)
    SpanLinesExporter.export = blocked_export
    import memspan
    memspan.configure(export_interval_s=60)
    for i in range(200):
        with memspan.phase("step"):
            pass
    started = time.monotonic()
    finished = memspan.shutdown(timeout_s=2.0)
    print(f"{finished} {time.monotonic() - started:.2f}", flush=True)
""")


def test_shutdown_returns_by_its_deadline_while_the_exporter_is_blocked(tmp_path: Path) -> None:
    result = run_python(BLOCKED, tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    finished, seconds = result.stdout.split()
    assert finished == "False"  # it says it could not finish...
    assert float(seconds) < 3.0  # ...and returns by its deadline anyway
