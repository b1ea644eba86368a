"""Child processes for the tests, each in a clean environment, and reading what they exported.

A test that starts a Python child (``python -c``, ``memspan run``, ``opentelemetry-instrument``)
goes through :func:`run_clean`: the child sees none of the parent's ``OTEL_``/``MEMSPAN_``
(nor report-naming) variables, only what the test passes, so a developer's shell cannot steer
the result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: variables that steer memspan, OpenTelemetry or the report's naming; a child gets none of
#: the parent's
CLEARED_PREFIXES = ("OTEL_", "MEMSPAN_", "RAMFLOW_", "APP_ENV")
#: ``opentelemetry-instrument`` of the interpreter running the tests (the same venv)
INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without :data:`CLEARED_PREFIXES` variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(CLEARED_PREFIXES)}
    env.update(extra)
    return env


def run_clean(argv: Sequence[str], cwd: Path | str | None = None, *,
              env: Mapping[str, str] | None = None,
              timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion, text output captured; ``env``: the whole environment
    (default :func:`clean_env`); the status is the caller's to check."""
    return subprocess.run(list(argv), cwd=cwd, env=dict(clean_env() if env is None else env),
                          capture_output=True, text=True, timeout=timeout, check=False)


def run_python(code: str, cwd: Path | str | None = None, *args: str,
               env: Mapping[str, str] | None = None,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -c CODE ARGS...`` (``CODE`` dedented) through :func:`run_clean`."""
    return run_clean([sys.executable, "-c", textwrap.dedent(code), *args], cwd, env=env,
                     timeout=timeout)


def run_instrumented(script: Path, cwd: Path | str | None = None, *,
                     env: Mapping[str, str] | None = None,
                     timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``opentelemetry-instrument python SCRIPT`` through :func:`run_clean`."""
    return run_clean([str(INSTRUMENT), sys.executable, str(script)], cwd, env=env,
                     timeout=timeout)


def memspan_run(cwd: Path, *args: str, env: Mapping[str, str] | None = None,
                timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``python -m memspan run ARGS...`` through :func:`run_clean`."""
    return run_clean([sys.executable, "-m", "memspan", "run", *args], cwd, env=env,
                     timeout=timeout)


def resource_lines(path: Path, kind: str = "resourceSpans") -> list[tuple[dict[str, Any],
                                                                        dict[str, Any]]]:
    """(resource attributes as plain values, scope record) of every scope in an OTLP JSON
    lines file (``kind``: ``resourceSpans`` or ``resourceMetrics``); [] when it is missing."""
    if not path.exists():
        return []
    scopes = "scopeSpans" if kind == "resourceSpans" else "scopeMetrics"
    out = []
    for line in path.read_text().splitlines():
        for resource in json.loads(line).get(kind, []):
            values = attrs(resource.get("resource", {}).get("attributes", []))
            out.extend((values, scope) for scope in resource.get(scopes, []))
    return out


def phase_services(out_dir: Path) -> dict[str, set[str]]:
    """Span name -> the ``service.name`` values its spans were exported with."""
    found: dict[str, set[str]] = {}
    for resource, scope in resource_lines(out_dir / "traces.jsonl"):
        for span in scope["spans"]:
            found.setdefault(span["name"], set()).add(resource.get("service.name"))
    return found


def metric_services(out_dir: Path) -> dict[str, set[str]]:
    """Metric name -> the ``service.name`` values it was exported with."""
    found: dict[str, set[str]] = {}
    for resource, scope in resource_lines(out_dir / "metrics.jsonl", "resourceMetrics"):
        for metric in scope["metrics"]:
            found.setdefault(metric["name"], set()).add(resource.get("service.name"))
    return found


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
