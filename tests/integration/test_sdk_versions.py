"""The phase span path against the oldest and the newest OpenTelemetry SDK the package allows.

The deferred path builds ``ReadableSpan``s itself and reads the SDK tracer's attributes, so it
is run for real on both ends of the supported range: the oldest releases that install together
(``sdk-oldest.txt``, in a venv of their own, built once and reused) and the newest (this venv).
Each run also checks the fallback to ordinary SDK spans (a processor with ``on_start`` work, a
tracer without the SDK's internals).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest

from launcher_helpers import clean_env, run_clean

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
OLDEST = HERE / "sdk-oldest.txt"
OLDEST_VENV = ROOT / ".venv-sdk-oldest"


def oldest_python() -> Path:
    python = OLDEST_VENV / "bin" / "python"
    stamp = OLDEST_VENV / ".pins"
    pins = OLDEST.read_text()
    if python.exists() and stamp.exists() and stamp.read_text() == pins:
        return python
    venv.EnvBuilder(with_pip=True, clear=True).create(OLDEST_VENV)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    "-r", str(OLDEST)], check=True, timeout=600)
    stamp.write_text(pins)
    return python


def probe(python: Path) -> dict[str, Any]:
    env = clean_env(PYTHONPATH=os.pathsep.join([str(ROOT / "src"), str(HERE)]))
    result = run_clean([str(python), str(HERE / "sdk_probe.py")], env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize("end", ["oldest", "newest"])
def test_phase_spans_on_both_ends_of_the_supported_sdk_range(end: str) -> None:
    python = oldest_python() if end == "oldest" else Path(sys.executable)
    result = probe(python)
    if end == "oldest":
        assert result["api"] == "1.44.0"
    assert result["histograms_match"]  # batch recording equals the SDK's record() here
    # every private OpenTelemetry access memspan makes (memspan.otel_internals) works here
    internals = result["internals"]
    fallbacks = {name for name, reached in internals.items() if not reached}
    assert len(internals) >= 17
    # the oldest SDK's metric storage differs: phase histograms use record() there
    assert fallbacks == ({"series_aggregations"} if end == "oldest" else set()), fallbacks
    expected_modes = {"plain": "sync", "batched": "deferred", "on_start": "sdk",
                      "missing_internals": "sdk"}
    for label, mode in expected_modes.items():
        run = result[label]
        assert run["mode"] == mode, label
        spans = {(s["name"], s["path"]): s for s in run["spans"]}
        assert spans[("forward", "train / step / forward")]["parent"] == "step", label
        assert spans[("GET /batch", None)]["parent"] == "forward", label
        step = spans[("step", "train / step")]
        assert step["parent"] is None and step["links"] == 1, label  # its own trace
        boom = spans[("boom", "train / boom")]
        assert boom["status"] == "ERROR" and boom["events"] == ["exception"], label
        assert all(s["has_rss_end"] for s in run["spans"] if s["path"]), label
        if label == "on_start":  # the user's processor saw every phase start
            assert all(s["on_start"] for s in run["spans"]), label
