"""Phases opened in forked children (``multiprocessing`` with fork: ``Process``, ``Pool``,
torch ``DataLoader`` workers) reach the output when the child ends through
``multiprocessing``'s normal paths, each child a session of its own."""

from __future__ import annotations

import json
from pathlib import Path

from launcher_helpers import run_python


def _phase_spans(out: Path) -> list[dict[str, object]]:
    spans = []
    for line in (out / "traces.jsonl").read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    attributes = {a["key"]: next(iter(a["value"].values()))
                                  for a in span.get("attributes", [])}
                    spans.append({"name": span["name"], **attributes})
    return spans


def test_pool_process_and_dataloader_workers_deliver_their_phases(tmp_path: Path) -> None:
    result = run_python("""
        import multiprocessing as mp
        import torch
        from torch.utils.data import DataLoader, Dataset
        import memspan

        memspan.configure(service_name="job", output_dir="out", dump_dir="dumps")

        def square(x):
            with memspan.phase("pool.work", item=x):
                return x * x

        def alone(n):
            for i in range(n):
                with memspan.phase("process.work", item=i):
                    pass

        class Items(Dataset):
            def __len__(self):
                return 64

            def __getitem__(self, index):
                with memspan.phase("dataset.getitem", index=index):
                    return torch.tensor([float(index)])

        if __name__ == "__main__":
            fork = mp.get_context("fork")
            with memspan.phase("parent"):
                pool = fork.Pool(2)
                assert sum(pool.map(square, range(60))) == sum(x * x for x in range(60))
                pool.close()
                pool.join()
                child = fork.Process(target=alone, args=(30,))
                child.start()
                child.join()
                assert child.exitcode == 0
                total = sum(float(b.sum()) for b in DataLoader(
                    Items(), batch_size=8, num_workers=2, multiprocessing_context="fork"))
                assert total == sum(range(64))
            memspan.shutdown()
            print("done")
    """, tmp_path, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    spans = _phase_spans(tmp_path / "out")
    by_name: dict[str, list[dict[str, object]]] = {}
    for span in spans:
        by_name.setdefault(str(span["name"]), []).append(span)
    assert len(by_name.get("pool.work", [])) == 60
    assert len(by_name.get("process.work", [])) == 30
    assert len(by_name.get("dataset.getitem", [])) == 64
    assert len(by_name["parent"]) == 1
    # every child is a session of its own: no scope id is used twice
    scope_ids = [span["memspan.phase.scope_id"] for span in spans]
    assert len(scope_ids) == len(set(scope_ids))
    sessions = {span["memspan.session.id"] for span in spans}
    assert len(sessions) >= 1 + 2 + 1 + 2  # parent, two pool workers, a process, two loaders


def test_optional_modules_are_imported_before_the_sampler_thread_starts(tmp_path: Path) -> None:
    """A fork while the sampler thread sat in its first ``import pynvml`` hung the child on
    the inherited import lock: the import happens when the session is built, not later."""
    result = run_python("""
        import os, sys, threading
        import memspan
        assert "pynvml" not in sys.modules
        memspan.configure(service_name="job", output_dir="out", dump_dir="dumps")
        print("imported before sampling", "pynvml" in sys.modules)
        pid = os.fork()
        if pid == 0:
            with memspan.phase("child"):
                pass
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        print("child exit", os.waitstatus_to_exitcode(status))
        memspan.shutdown()
    """, tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "imported before sampling True" in result.stdout
    assert "child exit 0" in result.stdout

