"""Running ``memspan run`` as a real subprocess and reading what it exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MEMSPAN_"))}
    env.update(extra)
    return env


def memspan_run(cwd: Path, *args: str, env: dict[str, str] | None = None,
                timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "memspan", "run", *args], cwd=cwd,
                          env=env or clean_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def run_spans(out_dir: Path) -> list[dict[str, Any]]:
    spans = []
    for line in (out_dir / "traces.jsonl").read_text().splitlines():
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs["scopeSpans"]:
                spans.extend(ss["spans"])
    return [s for s in spans if s["name"] == "memspan.run"]


def attrs(items: list[dict[str, Any]]) -> dict[str, Any]:
    """OTLP JSON attributes as a dict of plain values (arrays as lists)."""
    out: dict[str, Any] = {}
    for item in items:
        value = item["value"]
        if "arrayValue" in value:
            out[item["key"]] = [next(iter(v.values())) for v in value["arrayValue"].get("values", [])]
        else:
            out[item["key"]] = next(iter(value.values()))
    return out


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
