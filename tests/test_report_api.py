"""The seed's report API on a running session: memspan.generate_report and Tracker.generate_report."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

from launcher_helpers import clean_env, run_python

SCRIPT = textwrap.dedent("""
    import json, sys, memspan
    memspan.configure(service_name="oracle-sync", output_dir="out", dump_dir="dumps",
                      reports_dir="audits", export_interval_s=60)
    cache = {}
    with memspan.phase("sync"):
        for run in range(6):
            with memspan.phase("task", run=run):
                if run == 0:
                    cache.update({i: "x" * 2000 for i in range(5000)})  # filled once, kept
    first = memspan.generate_report(suffix="oracle_export")
    tracker = memspan.get_tracker()
    second = tracker.generate_report(folder="logs/sync", suffix="again")
    print(json.dumps({"first": first.html_path, "second": second.html_path,
                      "session": tracker.session_id, "badge": first.badge.text,
                      "spans": first.spans_read}))
    memspan.shutdown()
""")


def test_reports_of_the_running_session_land_where_configured(tmp_path: Path) -> None:
    result = run_python(SCRIPT, tmp_path, env=clean_env(APP_ENV="production", MEMSPAN_QUIET="true"),
                        timeout=180)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    first, second = Path(out["first"]), Path(out["second"])
    assert first.parent == tmp_path / "audits"  # configure(reports_dir=...) is honoured
    assert re.fullmatch(r"\d{8}_\d{6}_production_oracle_export\.html", first.name)
    assert second.parent == tmp_path / "logs" / "sync"
    assert second.name.endswith("_production_again.html")
    assert out["spans"] >= 7  # the phases of this session reached the output before the page
    sidecar = json.loads(first.with_suffix(".json").read_text())
    assert out["session"] in json.dumps(sidecar)
