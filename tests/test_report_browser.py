"""The report as a person sees it: real headless Chromium at 1400 px, screenshots and the DOM.

Six pages: the three seed scenarios, the per-step leak, a job with an OOM, and a job killed
by SIGKILL under ``memspan run``. Each is rendered, screenshotted (kept in the test's tmp
directory: look at them) and checked on what the browser rendered: the badge's text in the
DOM and its colour in the pixels, the charts' axes, the tables, the OOM link.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

from memspan.report import build_report
from png_pixels import count_near, read_png
from report_jobs import hostile_job, killed_run, run_example

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None,
    reason="chromium is installed by `make test` (scripts/install-test-deps.sh)")

GREEN, ORANGE, RED, DARK_RED, GREY = "#2e7d32", "#ef6c00", "#c62828", "#b71c1c", "#616161"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1400,2200"]


def chromium(url: str, profile: Path, shot: Path) -> str:
    """Screenshot ``url`` into ``shot``; return the rendered DOM."""
    flags = [*FLAGS, f"--user-data-dir={profile}"]
    subprocess.run(["chromium", *flags, f"--screenshot={shot}", url], capture_output=True,
                   timeout=120, check=True)
    return subprocess.run(["chromium", *flags, "--dump-dom", url], capture_output=True,
                          text=True, timeout=120, check=True).stdout


def page(html_path: str, tmp_path: Path, name: str) -> tuple[str, Path]:
    shot = tmp_path / f"{name}.png"
    dom = chromium(Path(html_path).as_uri(), tmp_path / "profile", shot)
    width, height, _, _ = read_png(shot, 1)
    assert (width, height) == (1400, 2200)
    return dom, shot


def badge_of(dom: str) -> tuple[str, str]:
    match = re.search(r'<div class="badge" id="badge" data-verdict="([^"]*)"[^>]*>([^<]*)</div>',
                      dom)
    assert match, "no badge in the rendered page"
    return match.group(1), match.group(2)


def assert_charts(dom: str) -> None:
    memory = dom[dom.index('<svg id="memory"'):]
    memory = memory[:memory.index("</svg>")]
    assert re.search(r">\d+(\.\d+)? (MiB|GiB)</text>", memory), "memory axis has no MiB ticks"
    assert re.search(r">\d+(\.\d+)? s</text>", memory), "memory chart has no time axis"
    assert 'class="curve"' in memory
    steps = dom[dom.index('<svg id="steps"'):]
    assert re.search(r">#\d+</text>", steps[:steps.index("</svg>")]), "no step axis"


@pytest.mark.parametrize(("script", "verdict", "color", "text"), [
    ("demo_forgotten_cache.py", "plateau", RED, "HIGH MEMORY PLATEAU · CRITICAL BLOAT"),
    ("scenario_clean_execution.py", "leak-free", GREEN, "CERTIFIED LEAK-FREE"),
    ("scenario_plateau.py", "plateau", RED, "HIGH MEMORY PLATEAU · CRITICAL BLOAT"),
    ("scenario_per_step_leak.py", "leaking", RED, "LEAK SUSPECTED"),
])
def test_scenario_pages_in_chromium(tmp_path: Path, script: str, verdict: str, color: str,
                                    text: str) -> None:
    run_example(script, tmp_path)
    (html,) = (tmp_path / ".memory_audits").glob("*.html")
    dom, shot = page(str(html), tmp_path, script.removesuffix(".py"))
    assert badge_of(dom) == (verdict, text)
    assert count_near(shot, color, top=200) > 3000, "the badge is not drawn in its colour"
    if color != GREEN:
        assert count_near(shot, GREEN, top=200) == 0
    assert_charts(dom)
    row = re.search(r'<tr><td class="text">sync_task</td><td>(\d+)</td>.*?</tr>', dom)
    assert row, "sync_task is not in the phase table"
    assert row.group(1) == ("300" if "per_step" in script else "8")
    assert 'class="evidence"' in row.group(0)
    assert 'id="thresholds"' in dom


def test_oom_page_in_chromium(tmp_path: Path) -> None:
    hostile_job(tmp_path / "out", tmp_path / "dumps")
    result = build_report(str(tmp_path / "out"), dump_dir=str(tmp_path / "dumps"),
                          out_dir=str(tmp_path / "r"))
    dom, shot = page(result.html_path, tmp_path, "oom")
    assert badge_of(dom) == ("failed", "OUT OF MEMORY")
    assert count_near(shot, DARK_RED, top=200) > 3000 and count_near(shot, GREEN, top=200) == 0
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom and "<script>" not in dom
    ooms = dom[dom.index('<table id="ooms"'):]
    ooms = ooms[:ooms.index("</table>")]
    links = re.findall(r'href="(file:///[^"]+)"', ooms)
    assert len(links) == 1 and (Path(unquote(urlparse(links[0]).path)) / "manifest.json").is_file()
    assert "doomed" in ooms and "host_oom" in ooms
    assert 'class="oom"' in dom  # the red line on the timeline


def test_sigkilled_page_in_chromium(tmp_path: Path) -> None:
    run = killed_run(tmp_path, steps=12, flush=True, service="trainer")
    assert run.returncode == 137
    result = build_report(str(tmp_path / "memspan-out"), dump_dir=str(tmp_path / "oom_dumps"),
                          out_dir=str(tmp_path / "r"))
    dom, shot = page(result.html_path, tmp_path, "sigkill")
    key, text = badge_of(dom)
    assert key == "failed" and text.startswith("KILLED BY SIGKILL")
    assert count_near(shot, DARK_RED, top=200) > 3000 and count_near(shot, GREEN, top=200) == 0
    assert "memspan memory audit: trainer" in dom
    assert "killed by SIGKILL (exit -9)" in dom
    assert_charts(dom)


class _Recorder(SimpleHTTPRequestHandler):
    requests: list[str] = []

    def log_message(self, format: str, *args: Any) -> None:
        _Recorder.requests.append(self.path)


def test_the_page_asks_for_nothing_else(tmp_path: Path) -> None:
    hostile_job(tmp_path / "out", tmp_path / "dumps")
    result = build_report(str(tmp_path / "out"), dump_dir=str(tmp_path / "dumps"),
                          out_dir=str(tmp_path / "r"))
    directory = Path(result.html_path).parent

    def handler(*args: Any, **kwargs: Any) -> _Recorder:
        return _Recorder(*args, directory=str(directory), **kwargs)

    _Recorder.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{Path(result.html_path).name}"
    try:
        chromium(url, tmp_path / "profile", tmp_path / "served.png")
    finally:
        server.shutdown()
        server.server_close()
    assert set(_Recorder.requests) == {"/" + Path(result.html_path).name}
