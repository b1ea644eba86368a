"""``memspan.configure()`` after ``memspan.shutdown()`` in the same process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "scripts" / "configure_twice.py"


def test_second_configure_after_shutdown_exports_or_says_it_cannot(tmp_path: Path) -> None:
    """The second ``configure()`` finds the global providers the first one installed (OTel
    globals cannot be replaced) and shut down: phase ``two`` is silently lost, while the
    start-up line claims ``spans: FlushHook; spans: FlushHook; spans: SpanLinesExporter ->
    .../traces.jsonl`` (memspan's own flush hook listed twice as a destination)."""
    done = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, env=dict(os.environ),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    traces = (tmp_path / "memspan-out" / "traces.jsonl").read_text()
    assert '"name":"one"' in traces
    startup_lines = [line for line in done.stderr.splitlines()
                     if line.startswith("memspan: telemetry")]
    assert "FlushHook" not in "\n".join(startup_lines), startup_lines
    assert '"name":"two"' in traces, done.stderr
