"""Real jobs for the report tests: child processes writing the embedded default output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from launcher_helpers import clean_env, run_clean
from launcher_helpers import run_python as run_clean_python

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_python(code: str, cwd: Path, timeout: float = 180, **env: str) -> subprocess.CompletedProcess[str]:
    return run_clean_python(code, cwd, env=clean_env(**env), timeout=timeout)


def memspan_cli(*args: str, cwd: Path | None = None, timeout: float = 180,
                **env: str) -> subprocess.CompletedProcess[str]:
    return run_clean([sys.executable, "-m", "memspan", *args], cwd, env=clean_env(**env),
                     timeout=timeout)


def run_example(script: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, object]]:
    result = run_clean([sys.executable, str(EXAMPLES / script)], cwd, timeout=300)
    assert result.returncode == 0, result.stderr
    (sidecar,) = (cwd / ".memory_audits").glob("*.json")
    return result, json.loads(sidecar.read_text())


def hostile_job(output_dir: Path, dump_dir: Path) -> None:
    """A job with a hostile phase name and service, and one OOM with its bundle."""
    result = run_python(f"""
        import memspan
        memspan.configure(service_name="evil<b>service", output_dir={str(output_dir)!r},
                          dump_dir={str(dump_dir)!r}, export_interval_s=60)
        for i in range(6):
            with memspan.phase("<script>alert(1)</script>"):
                with memspan.phase("inner", note='"quoted" & <tag>'):
                    pass
        try:
            with memspan.phase("doomed"):
                raise MemoryError("no room")
        except MemoryError:
            pass
        memspan.shutdown()
    """, output_dir.parent)
    assert result.returncode == 0, result.stderr


def session_job(output_dir: Path, keep_mib: int, runs: int, service: str = "appender") -> str:
    """One process running ``train`` ``runs`` times, each keeping ``keep_mib``; its session id."""
    result = run_python(f"""
        import memspan
        memspan.configure(service_name={service!r}, output_dir={str(output_dir)!r},
                          export_interval_s=60)
        kept = []
        for _ in range({runs}):
            with memspan.phase("train"):
                kept.append(b"x" * ({keep_mib} << 20))
        print(memspan.get_tracker().session_id)
        memspan.shutdown()
    """, output_dir.parent)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


KILLED_CHILD = """
import os, signal, sys, time
import memspan
memspan.configure(service_name="trainer", export_interval_s=0.2)
keep = []
for step in range(int(sys.argv[1])):
    with memspan.phase("train_step", step=step):
        keep.append(b"x" * (256 * 1024))
if sys.argv[2] == "flush":  # the spans reach the output before the kill, as in a long job
    from opentelemetry import metrics, trace
    trace.get_tracer_provider().force_flush()
    metrics.get_meter_provider().force_flush()
else:
    time.sleep(0.6)  # breadcrumbs only: the kill comes before any span export
os.kill(os.getpid(), signal.SIGKILL)
"""


def killed_run(cwd: Path, steps: int = 12, flush: bool = True,
               service: str | None = None) -> subprocess.CompletedProcess[str]:
    """``memspan run`` around a child that SIGKILLs itself after ``steps`` phases."""
    (cwd / "child.py").write_text(KILLED_CHILD)
    named = ["--service-name", service] if service else []
    return memspan_cli("run", *named, "--", sys.executable, "child.py", str(steps),
                       "flush" if flush else "crumbs", cwd=cwd)
