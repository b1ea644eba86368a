"""8 threads and 50 asyncio tasks nest phases at once while some of them hit OOMs."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import torch

from conftest import make_telemetry
from memspan import MemspanConfig, names
from memspan.oom.retention import list_bundles

OOM = "CUDA out of memory. Tried to allocate 1.00 GiB. GPU 0 has a total capacity of 8.00 GiB of which 0.50 GiB is free."


def test_threads_and_tasks_with_ooms(tmp_path: Path) -> None:
    t = make_telemetry(config=MemspanConfig(dump_dir=str(tmp_path), max_dumps=1000,
                                            max_total_mb=1000, sample_interval_s=0.01),
                       start_sampler=True)
    t.tracker.flight_recorder.recorder.max_dumps_per_minute = 1000
    tracker = t.tracker
    caught: list[BaseException] = []
    unexpected: list[BaseException] = []
    lock = threading.Lock()

    def unit_of_work(label: str, fail: bool) -> None:
        with tracker.phase(f"outer-{label}"):
            for step in range(20):
                with tracker.phase("step", step=step), tracker.phase("inner"):
                    if fail and step == 10:
                        raise torch.OutOfMemoryError(OOM)

    def guarded(label: str, fail: bool) -> None:
        try:
            unit_of_work(label, fail)
        except torch.OutOfMemoryError as error:
            with lock:
                caught.append(error)
        except BaseException as error:  # anything else is a bug
            with lock:
                unexpected.append(error)

    threads = [threading.Thread(target=guarded, args=(f"t{i}", i % 3 == 0)) for i in range(8)]
    for thread in threads:
        thread.start()

    async def task(i: int) -> None:
        await asyncio.sleep(0)
        try:
            with tracker.phase(f"outer-a{i}"):
                for step in range(5):
                    with tracker.phase("step", step=step):
                        await asyncio.sleep(0.001)
                        with tracker.phase("inner"):
                            if i % 10 == 0 and step == 3:
                                raise torch.OutOfMemoryError(OOM)
        except torch.OutOfMemoryError as error:
            caught.append(error)

    async def main() -> None:
        await asyncio.gather(*(task(i) for i in range(50)))

    asyncio.run(main())
    for thread in threads:
        thread.join(timeout=60)
    tracker.shutdown()
    assert unexpected == []
    expected_ooms = 3 + 5  # threads 0, 3, 6 and tasks 0, 10, 20, 30, 40
    assert len(caught) == expected_ooms
    bundles = list_bundles(str(tmp_path))
    assert len(bundles) == expected_ooms  # one bundle per OOM, however deep the nesting
    for bundle in bundles:
        manifest: dict[str, Any] = json.loads(Path(bundle.path, "manifest.json").read_text())
        assert sorted(manifest["files"]) == sorted(os.listdir(bundle.path))
        assert manifest["phase_path"].endswith("/ step / inner")
    spans = t.finished()
    by_id = {s.context.span_id: s for s in spans}
    scope_of = {(s.attributes or {})[names.PHASE_SCOPE_ID]: s for s in spans}
    for span in spans:
        attrs = span.attributes or {}
        path = str(attrs[names.PHASE_PATH])
        if attrs[names.PHASE_DEPTH] == 1:
            assert span.parent is None
            continue
        if attrs.get(names.PHASE_TRACE_ROOT):  # a step starts its own trace, linked to its parent
            assert span.parent is None
            parent = by_id[span.links[0].context.span_id]
            assert scope_of[attrs[names.PHASE_PARENT_SCOPE_ID]] is parent
            continue
        assert span.parent is not None
        parent = by_id[span.parent.span_id]
        assert scope_of[attrs[names.PHASE_PARENT_SCOPE_ID]] is parent
        assert path.rsplit(" / ", 1)[0] == (parent.attributes or {})[names.PHASE_PATH]
        assert span.context.trace_id == parent.context.trace_id
    assert tracker.ledger.count("callback_error") == 0
    assert tracker.ledger.count("protocol_error") == 0
