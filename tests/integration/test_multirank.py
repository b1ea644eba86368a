"""A real 2-rank torchrun job (gloo, CPU): each rank exports spans with its own rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "torchrun_gloo.py"


def test_two_ranks_export_spans_with_distinct_ranks(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MEMSPAN_"))}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(EXAMPLE)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks: dict[int, set[str]] = {}
    for line in (tmp_path / "memspan-out/traces.jsonl").read_text().splitlines():
        for resource_spans in json.loads(line)["resourceSpans"]:
            resource = {a["key"]: a["value"] for a in resource_spans["resource"]["attributes"]}
            rank = int(resource["memspan.rank"]["intValue"])
            assert resource["memspan.world_size"] == {"intValue": "2"}
            assert "memspan.job.id" in resource  # torchrun's run id
            for scope_spans in resource_spans["scopeSpans"]:
                ranks.setdefault(rank, set()).update(s["name"] for s in scope_spans["spans"])
    assert set(ranks) == {0, 1}
    for names in ranks.values():
        assert {"train", "step", "allreduce"} <= names
