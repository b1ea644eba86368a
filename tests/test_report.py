"""The HTML audit report: scenarios, naming, escaping, and a real headless browser."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from datetime import datetime, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from memspan.report import build_report

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOW = datetime(2026, 4, 19, 15, 30, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize(("script", "expected"), [
    ("demo_forgotten_cache.py", "leaking"),
    ("scenario_clean_execution.py", "leak-free"),
    ("scenario_plateau.py", "plateau"),
])
def test_audit_scenarios(tmp_path: Path, script: str, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MEMSPAN_"))}
    result = subprocess.run([sys.executable, str(EXAMPLES / script)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    assert f"sync_task verdict {expected}" in result.stdout
    (sidecar,) = (tmp_path / ".memory_audits").glob("*.json")
    data = json.loads(sidecar.read_text())
    assert data["overall"]["verdict"] == expected
    assert [p["verdict"] for p in data["paths"] if p["path"] == "sync_task"] == [expected]


def write_job(output_dir: Path, dump_dir: Path) -> None:
    """A real job through the embedded default: a hostile phase name and an OOM."""
    script = f"""
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
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MEMSPAN_"))}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("job")
    write_job(root / "out", root / "dumps")
    return root / "out", root / "dumps"


def test_report_content_is_escaped_and_linked(job: tuple[Path, Path], tmp_path: Path) -> None:
    out, dumps = job
    result = build_report(str(out), dump_dir=str(dumps), out_dir=str(tmp_path), now=NOW)
    html = Path(result.html_path).read_text()
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "evil&lt;b&gt;service" in html
    assert re.search(r'<a href="file:///[^"]+_r0_p\d+_1"><line class="oom"', html)
    assert "http://" not in html and "https://" not in html and "<script" not in html
    sidecar = json.loads(Path(result.json_path).read_text())
    assert {p["path"] for p in sidecar["paths"]} == {
        "<script>alert(1)</script>", "<script>alert(1)</script> / inner", "doomed"}
    assert sidecar["ooms"][0]["kind"] == "host_oom"


def test_report_names_never_collide_or_escape(job: tuple[Path, Path], tmp_path: Path) -> None:
    out, dumps = job
    first = build_report(str(out), dump_dir=str(dumps), out_dir=str(tmp_path), now=NOW,
                         environment="production")
    second = build_report(str(out), dump_dir=str(dumps), out_dir=str(tmp_path), now=NOW,
                          environment="production")
    assert Path(first.html_path).name == "20260419_153005_production_memory_audit.html"
    assert Path(second.html_path).name == "20260419_153005_production_memory_audit_2.html"
    evil = build_report(str(out), dump_dir=str(dumps), out_dir=str(tmp_path / "reports"),
                        now=NOW, suffix="../../etc/x", environment="../prod")
    assert Path(evil.html_path).parent == (tmp_path / "reports").resolve()
    assert Path(evil.html_path).name == "20260419_153005_prod_etc-x.html"


def test_reports_dir_from_the_environment(job: tuple[Path, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out, dumps = job
    monkeypatch.setenv("MEMSPAN_REPORTS_DIR", str(tmp_path / "audits"))
    monkeypatch.setenv("APP_ENV", "staging")
    result = build_report(str(out), dump_dir=str(dumps), now=NOW)
    assert Path(result.html_path).parent == tmp_path / "audits"
    assert "_staging_" in Path(result.html_path).name


def test_report_cli_on_missing_input(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "memspan", "report", "--input",
                             str(tmp_path / "nothing")], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2
    assert "no traces.jsonl in" in result.stderr and "Traceback" not in result.stderr


class _Recorder(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        _Recorder.requests.append(self.path)


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="chromium is installed by `make test` (scripts/install-test-deps.sh)")
def test_report_in_headless_chromium(job: tuple[Path, Path], tmp_path: Path) -> None:
    out, dumps = job
    result = build_report(str(out), dump_dir=str(dumps), out_dir=str(tmp_path), now=NOW)
    directory = Path(result.html_path).parent

    def handler(*args: Any, **kwargs: Any) -> _Recorder:
        return _Recorder(*args, directory=str(directory), **kwargs)

    _Recorder.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{Path(result.html_path).name}"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1400"]
    try:
        shot = tmp_path / "report.png"
        subprocess.run(["chromium", *flags, f"--screenshot={shot}", url], capture_output=True,
                       timeout=120, check=True)
        dom = subprocess.run(["chromium", *flags, "--dump-dom", url], capture_output=True,
                             text=True, timeout=120, check=True).stdout
    finally:
        server.shutdown()
        server.server_close()
    assert shot.stat().st_size > 10_000
    assert 'id="timeline"' in dom and 'class="phase"' in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # shown as text, never run
    assert "<script>" not in dom
    page = "/" + Path(result.html_path).name
    assert set(_Recorder.requests) == {page}  # nothing else was requested: self-contained


def test_progress_bar_only_on_a_terminal(tmp_path: Path) -> None:
    import pty

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from report_scale import generate

    (tmp_path / "in").mkdir()
    size = generate(str(tmp_path / "in" / "traces.jsonl"), 15_000)
    assert size > 8 * 1024 * 1024
    command = [sys.executable, "-m", "memspan", "report", "--input", str(tmp_path / "in"),
               "--out", str(tmp_path / "out")]
    piped = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert piped.returncode == 0 and "reading spans" not in piped.stderr
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=120) == 0
    os.close(leader)
    text = output.decode(errors="replace")
    assert "reading spans [" in text and "100%" in text
