"""``@memspan.phase`` applied at import time, then ``memspan.configure()`` in main."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "scripts" / "decorator_before_configure.py"


def _spans(path: Path) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for line in path.read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                for span in ss["spans"]:
                    attributes = {a["key"]: next(iter(a["value"].values()))
                                  for a in span["attributes"]}
                    out[span["name"]] = attributes
    return out


def test_decorated_phase_joins_the_configured_session(tmp_path: Path) -> None:
    """The decorator resolves the default tracker when it is applied (import time), so the
    function's phases belong to the tracker that ``configure()`` replaced and shut down:
    another session id, path ``load_data`` instead of ``train / load_data``, and
    ``memspan report`` then audits that stray one-phase session instead of the job."""
    env = dict(os.environ, MEMSPAN_QUIET="true")
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    spans = _spans(tmp_path / "memspan-out" / "traces.jsonl")
    assert spans["load_data"]["memspan.session.id"] == spans["train"]["memspan.session.id"]
    assert spans["load_data"]["memspan.phase.path"] == "train / load_data"
