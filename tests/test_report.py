"""The HTML audit report: scenarios, sessions, memspan run outcomes, OOM links, naming, CLI."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from memspan.report import InputError, build_report, generate_report, list_sessions
from report_jobs import (
    hostile_job,
    killed_run,
    memspan_cli,
    run_example,
    session_job,
)

NOW = datetime(2026, 4, 19, 15, 30, 5, tzinfo=timezone.utc)


@pytest.mark.parametrize(("script", "expected", "critical"), [
    ("demo_forgotten_cache.py", "plateau", True),     # Scenario A: cache filled once
    ("scenario_clean_execution.py", "leak-free", False),  # Scenario B
    ("scenario_plateau.py", "plateau", True),         # allocate 128 MiB once and hold
    ("scenario_growing_cache.py", "leaking", False),  # a new 5,000 records every run
    ("scenario_per_step_leak.py", "leaking", False),  # 412 KiB kept per step, 300 steps
])
def test_audit_scenarios(tmp_path: Path, script: str, expected: str, critical: bool) -> None:
    result, data = run_example(script, tmp_path)
    assert f"sync_task verdict {expected}" in result.stdout
    (path,) = [p for p in data["paths"] if p["path"] == "sync_task"]  # type: ignore[union-attr]
    assert path["verdict"] == expected and path["critical"] is critical
    assert data["overall"]["verdict"] == expected  # type: ignore[index]
    badge = data["badge"]["text"]  # type: ignore[index]
    if critical:
        assert badge == "HIGH MEMORY PLATEAU · CRITICAL BLOAT"
    else:
        assert badge == {"leaking": "LEAK SUSPECTED", "leak-free": "CERTIFIED LEAK-FREE"}[expected]
    evidence = path["evidence"]
    assert re.search(r"\d+ runs", evidence) and "R² " in evidence
    if script == "scenario_per_step_leak.py":
        assert path["runs"] == 300 and path["held_bytes"] > 100 * 2**20


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("job")
    hostile_job(root / "out", root / "dumps")
    return root / "out", root / "dumps"


def test_report_content_is_escaped_and_each_oom_linked_once(job: tuple[Path, Path],
                                                             tmp_path: Path) -> None:
    out, dumps = job
    result = build_report(str(out), dump_dir=str(dumps), out_dir=str(tmp_path), now=NOW)
    html = Path(result.html_path).read_text()
    assert "<script>alert(1)" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "evil&lt;b&gt;service" in html
    assert "http://" not in html and "https://" not in html and "<script" not in html
    links = re.findall(r'<a href="(file://[^"]+)"', html)
    assert len(links) == 1, links  # the span's OOM event and the bundle are one OOM
    target = Path(unquote(urlparse(links[0]).path))
    assert target.is_absolute() and (target / "manifest.json").is_file()
    sidecar = json.loads(Path(result.json_path).read_text())
    assert {p["path"] for p in sidecar["paths"]} == {
        "<script>alert(1)</script>", "<script>alert(1)</script> / inner", "doomed"}
    (oom,) = sidecar["ooms"]
    assert oom["kind"] == "host_oom" and oom["path"] == "doomed"
    assert sidecar["badge"]["text"] == "OUT OF MEMORY"  # an OOM happened: never green
    # run metadata and the thresholds used are on the page
    for label in ("service", "host", "rank", "start", "end", "command", "memspan version"):
        assert f"<dt>{label}</dt>" in html
    assert 'id="thresholds"' in html and "MEMSPAN_LEAK_MIN_RUNS" in html


def test_top_phases_rank_what_each_phase_added(tmp_path: Path) -> None:
    from report_jobs import run_python

    result = run_python(f"""
        import memspan
        memspan.configure(output_dir={str(tmp_path / 'out')!r}, export_interval_s=60)
        keep = []
        with memspan.phase("outer"):
            with memspan.phase("big"):
                keep.append(b"x" * (40 << 20))
            with memspan.phase("small"):
                keep.append(b"x" * (4 << 20))
        memspan.shutdown()
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    report = build_report(str(tmp_path / "out"), dump_dir=str(tmp_path / "d"),
                          out_dir=str(tmp_path / "r"), now=NOW)
    paths = {p["path"]: p for p in json.loads(Path(report.json_path).read_text())["paths"]}
    big, small = paths["outer / big"]["added_bytes"], paths["outer / small"]["added_bytes"]
    assert 38 << 20 < big < 48 << 20 and 3 << 20 < small < 10 << 20
    html = Path(report.html_path).read_text()
    top = html[html.index('id="top"'):]
    assert top.index("outer / big") < top.index("outer / small")
    assert all(p["verdict"] == "insufficient data" for p in paths.values())
    assert "INSUFFICIENT DATA" in html and "CERTIFIED LEAK-FREE" not in html


def test_one_report_is_about_one_session(tmp_path: Path) -> None:
    out = tmp_path / "memspan-out"
    first = session_job(out, keep_mib=34, runs=1, service="first")
    second = session_job(out, keep_mib=34, runs=1, service="second")
    sessions = list_sessions(str(out))
    assert [s.key for s in sessions] == [first, second]
    latest = build_report(str(out), dump_dir=str(tmp_path / "d"), out_dir=str(tmp_path / "r"))
    assert latest.session == second
    verdict = latest.verdicts["train"]
    assert verdict.runs == 1 and verdict.verdict == "insufficient data"  # not a 2-run "leak"
    assert "memspan memory audit: second" in Path(latest.html_path).read_text()
    chosen = build_report(str(out), dump_dir=str(tmp_path / "d"), out_dir=str(tmp_path / "r"),
                          session=first)
    assert chosen.session == first and "audit: first" in Path(chosen.html_path).read_text()
    merged = build_report(str(out), dump_dir=str(tmp_path / "d"), out_dir=str(tmp_path / "r"),
                          merge_all=True)
    assert merged.verdicts["train"].runs == 2
    with pytest.raises(InputError, match="no session 'nope'"):
        build_report(str(out), dump_dir=str(tmp_path / "d"), out_dir=str(tmp_path / "r"),
                     session="nope")
    listed = memspan_cli("report", "--input", str(out), "--list-sessions")
    assert listed.returncode == 0
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith(first) and "first" in lines[0]
    cli = memspan_cli("report", "--input", str(out), "--out", str(tmp_path / "c"),
                      "--session", first)
    assert cli.returncode == 0 and f"session {first}" in cli.stdout


def test_a_killed_job_is_red_and_named_after_the_childs_service(tmp_path: Path) -> None:
    run = killed_run(tmp_path, steps=12, flush=True, service="trainer")
    assert run.returncode == 137, run.stderr
    report = build_report(str(tmp_path / "memspan-out"), dump_dir=str(tmp_path / "oom_dumps"),
                          out_dir=str(tmp_path / "r"))
    assert report.badge.key == "failed" and report.badge.text.startswith("KILLED BY SIGKILL")
    assert report.badge.color != "#2e7d32"
    assert "killed by SIGKILL (exit -9)" in report.badge.sentence
    html = Path(report.html_path).read_text()
    assert "memspan memory audit: trainer" in html and "memspan-run" not in html
    assert report.verdicts["train_step"].runs == 12
    assert "killed by SIGKILL (-9)" in html


def test_a_job_killed_before_any_export_is_replayed_from_its_breadcrumbs(tmp_path: Path) -> None:
    run = killed_run(tmp_path, steps=30, flush=False)
    assert run.returncode == 137, run.stderr
    report = build_report(str(tmp_path / "memspan-out"), dump_dir=str(tmp_path / "oom_dumps"),
                          out_dir=str(tmp_path / "r"))
    assert report.badge.text.startswith("KILLED BY SIGKILL")
    assert report.verdicts["train_step"].runs == 30
    html = Path(report.html_path).read_text()
    assert "memspan memory audit: child" in html  # the script's name, not memspan-run
    assert "replayed from the OOM bundle" in html
    assert "<dt>host</dt><dd>unknown</dd>" not in html  # the bundle's name carries the host
    assert len(re.findall(r'<a href="file:///', html)) == 1


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


def test_generate_report_follows_the_seed_api(job: tuple[Path, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out, dumps = job
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("APP_ENV", "production")
    result = generate_report(folder="logs/sync", suffix="oracle_export", input_dir=str(out),
                             dump_dir=str(dumps), now=NOW)
    assert result.html_path == str(tmp_path / "logs/sync/20260419_153005_production_oracle_export.html")
    # configure(reports_dir=...) is passed as reports_dir; folder wins over it
    configured = generate_report(reports_dir="configured", input_dir=str(out), dump_dir=str(dumps))
    assert Path(configured.html_path).parent == tmp_path / "configured"
    assert oct((tmp_path / "configured").stat().st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("variable", ["MEMSPAN_REPORTS_DIR", "RAMFLOW_REPORTS_DIR"])
def test_reports_dir_from_the_environment(job: tuple[Path, Path], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    out, dumps = job
    monkeypatch.delenv("MEMSPAN_REPORTS_DIR", raising=False)
    monkeypatch.delenv("RAMFLOW_REPORTS_DIR", raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "audits"))
    monkeypatch.setenv("APP_ENV", "staging")
    result = build_report(str(out), dump_dir=str(dumps), now=NOW)
    assert Path(result.html_path).parent == tmp_path / "audits"
    assert "_staging_" in Path(result.html_path).name


def test_memspan_reports_dir_wins_over_the_ramflow_alias(job: tuple[Path, Path], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    out, dumps = job
    monkeypatch.setenv("MEMSPAN_REPORTS_DIR", str(tmp_path / "memspan"))
    monkeypatch.setenv("RAMFLOW_REPORTS_DIR", str(tmp_path / "ramflow"))
    result = build_report(str(out), dump_dir=str(dumps))
    assert Path(result.html_path).parent == tmp_path / "memspan"


def test_the_sidecar_replaces_a_planted_symlink_never_follows_it(job: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    out, dumps = job
    reports = tmp_path / "reports"
    reports.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (reports / "20260419_153005_local_memory_audit.json").symlink_to(victim)
    result = build_report(str(out), dump_dir=str(dumps), out_dir=str(reports), now=NOW)
    assert victim.read_text() == "precious"
    sidecar = Path(result.json_path)
    assert not sidecar.is_symlink() and json.loads(sidecar.read_text())["spans_read"] > 0
    assert not [p for p in reports.iterdir() if p.name.startswith(".tmp")]
    # a planted symlink at the page's own name is skipped (exclusive create), not followed
    (reports / "20260419_153005_local_again.html").symlink_to(victim)
    again = build_report(str(out), dump_dir=str(dumps), out_dir=str(reports), now=NOW,
                         suffix="again")
    assert Path(again.html_path).name == "20260419_153005_local_again_2.html"
    assert victim.read_text() == "precious"


def test_report_cli_on_missing_input(tmp_path: Path) -> None:
    result = memspan_cli("report", "--input", str(tmp_path / "nothing"))
    assert result.returncode == 2
    assert "no traces.jsonl in" in result.stderr and "Traceback" not in result.stderr


def test_report_cli_out_naming_a_file_is_one_clear_line(job: tuple[Path, Path],
                                                        tmp_path: Path) -> None:
    out, _ = job
    (tmp_path / "file").write_text("x")
    result = memspan_cli("report", "--input", str(out), "--out", str(tmp_path / "file"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == (f"memspan report: reports directory "
                                     f"{str(tmp_path / 'file')!r} exists and is not a directory")


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


def _otlp_attr(key: str, value: object) -> dict[str, object]:
    kind = "stringValue" if isinstance(value, str) else "intValue"
    return {"key": key, "value": {kind: value if isinstance(value, str) else str(value)}}


def test_memory_chart_draws_the_limit_in_scale_with_phase_edge_points(tmp_path: Path) -> None:
    base = 1_790_000_000_000_000_000
    spans = [{"name": "step", "startTimeUnixNano": str(base + i * 10**8),
              "endTimeUnixNano": str(base + i * 10**8 + 5 * 10**7),
              "attributes": [_otlp_attr("memspan.phase.path", "step"),
                             _otlp_attr("memspan.session.id", "s"),
                             _otlp_attr("memspan.memory.rss.start", (100 + i) << 20),
                             _otlp_attr("memspan.memory.rss.end", (101 + i) << 20),
                             _otlp_attr("memspan.memory.rss.peak", (130 + i) << 20)]}
             for i in range(30)]
    resource = {"attributes": [_otlp_attr("service.instance.id", "proc-1")]}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "traces.jsonl").write_text(json.dumps({"resourceSpans": [
        {"resource": resource, "scopeSpans": [{"spans": spans}]}]}) + "\n")

    def metrics(*named: tuple[str, int]) -> None:
        (tmp_path / "in" / "metrics.jsonl").write_text(json.dumps({"resourceMetrics": [
            {"resource": resource, "scopeMetrics": [{"metrics": [
                {"name": name, "gauge": {"dataPoints": [
                    {"timeUnixNano": str(base + 10**9), "asInt": str(value)}]}}
                for name, value in named]}]}]}) + "\n")

    metrics(("memspan.cgroup.memory.limit", 512 << 20), ("memspan.cgroup.memory.usage", 400 << 20))
    result = build_report(str(tmp_path / "in"), dump_dir=str(tmp_path / "d"),
                          out_dir=str(tmp_path / "r"))
    html = Path(result.html_path).read_text()
    chart = html[html.index('<svg id="memory"'):]
    chart = chart[:chart.index("</svg>")]
    limit_y = float(re.search(r'<line id="limit"[^>]* y1="([\d.]+)"', chart).group(1))  # type: ignore[union-attr]
    assert 10 <= limit_y <= 270  # inside the plot, not above it
    assert ">memory limit 512.0 MiB</text>" in chart and ">600 MiB</text>" in chart
    edges = re.search(r'<polyline class="curve"[^>]*points="([^"]+)"><title>RSS at phase edges',
                      chart)
    assert edges and len(edges.group(1).split()) == 90  # start, peak and end of 30 phases
    assert "above the scale" not in html
    assert result.verdicts["step"].verdict == "leaking"
    # Without a limit, the container's usage (page cache included) does not squash the
    # process's curves: it is clipped, and the legend says so.
    metrics(("memspan.cgroup.memory.usage", 3 << 30))
    unlimited = Path(build_report(str(tmp_path / "in"), dump_dir=str(tmp_path / "d"),
                                  out_dir=str(tmp_path / "r")).html_path).read_text()
    assert "up to 3.0 GiB: above the scale" in unlimited and ">150 MiB</text>" in unlimited


def test_the_child_service_on_the_run_span_names_the_page(tmp_path: Path) -> None:
    base = 1_790_000_000_000_000_000
    child = {"attributes": [_otlp_attr("service.name", "unknown_service:python3"),
                            _otlp_attr("service.instance.id", "child-1")]}
    launcher = {"attributes": [_otlp_attr("service.name", "memspan-run")]}
    phases = [{"name": "step", "startTimeUnixNano": str(base + 10**8 + i * 10**6),
               "endTimeUnixNano": str(base + 10**8 + i * 10**6 + 10**5),
               "attributes": [_otlp_attr("memspan.phase.path", "step"),
                              _otlp_attr("memspan.session.id", "child-session")]}
              for i in range(3)]
    run = {"name": "memspan.run", "startTimeUnixNano": str(base), "endTimeUnixNano": str(base + 10**9),
           "attributes": [_otlp_attr("memspan.run.child.service.name", "ranker"),
                          _otlp_attr("process.exit.code", -9), _otlp_attr("process.pid", 4242)],
           "status": {"code": 2, "message": "exit_code:-9"}}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "traces.jsonl").write_text("\n".join(json.dumps({"resourceSpans": [
        {"resource": resource, "scopeSpans": [{"spans": spans}]}]})
        for resource, spans in ((child, phases), (launcher, [run]))) + "\n")
    result = build_report(str(tmp_path / "in"), dump_dir=str(tmp_path / "d"),
                          out_dir=str(tmp_path / "r"))
    assert result.session == "child-session"
    html = Path(result.html_path).read_text()
    assert "memspan memory audit: ranker" in html
    assert result.badge.text == "KILLED BY SIGKILL"
    assert [s.key for s in list_sessions(str(tmp_path / "in"))] == ["child-session"]


def test_device_phases_are_judged_on_allocator_figures(tmp_path: Path) -> None:
    # What a CUDA job writes (no GPU here): allocator figures are the primary ones.
    base = 1_790_000_000_000_000_000
    gib = 1 << 30
    spans = [{"name": "step", "startTimeUnixNano": str(base + i * 10**8),
              "endTimeUnixNano": str(base + i * 10**8 + 5 * 10**7),
              "attributes": [_otlp_attr("memspan.phase.path", "train / step"),
                             _otlp_attr("memspan.phase.depth", 2),
                             _otlp_attr("memspan.session.id", "gpu"),
                             _otlp_attr("memspan.memory.device", "cuda:0"),
                             _otlp_attr("memspan.memory.rss.start", 3 * gib),
                             _otlp_attr("memspan.memory.rss.end", 3 * gib),
                             _otlp_attr("memspan.memory.allocated.start", 2 * gib + i * (50 << 20)),
                             _otlp_attr("memspan.memory.allocated.end", 2 * gib + (i + 1) * (50 << 20)),
                             _otlp_attr("memspan.memory.allocated.peak", 6 * gib + i * (50 << 20))]}
             for i in range(20)]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "traces.jsonl").write_text(json.dumps({"resourceSpans": [
        {"resource": {"attributes": []}, "scopeSpans": [{"spans": spans}]}]}) + "\n")
    result = build_report(str(tmp_path / "in"), dump_dir=str(tmp_path / "d"),
                          out_dir=str(tmp_path / "r"))
    verdict = result.verdicts["train / step"]
    # 50 MiB per step over 19 steps = 950 MiB; 10% of the 4 GiB working memory is 410 MiB
    assert verdict.verdict == "leaking" and verdict.working_bytes == 4 * gib
    assert verdict.growth_threshold_bytes == pytest.approx(0.1 * 4 * gib)
    html = Path(result.html_path).read_text()
    assert "allocated at phase edges [cuda:0]" in html and ">GiB<" not in html
    assert re.search(r">\d+(\.\d+)? GiB</text>", html)
