"""A real 2-rank torchrun job (gloo, CPU): each rank exports spans with its own rank."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from launcher_helpers import run_clean

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "torchrun_gloo.py"


def test_two_ranks_export_spans_with_distinct_ranks(tmp_path: Path) -> None:
    result = run_clean(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(EXAMPLE)],
        tmp_path, timeout=240,
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
