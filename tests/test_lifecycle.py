"""After ``memspan.shutdown()`` (and so in atexit handlers that run after memspan's), phases
pass through: no thread starts again, nothing more is written, the SDK warns of nothing;
``configure()`` starts a new session. A ``configure()`` after the session started (under
``memspan run``/``opentelemetry-instrument``, or after a phase) joins it or says what it could
not keep, in real subprocesses."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

from launcher_helpers import (
    attrs,
    clean_env,
    memspan_run,
    metric_services,
    phase_services,
    resource_lines,
    run_instrumented,
    run_python,
)
from memspan.oom.retention import list_bundles


def test_phases_after_shutdown_pass_through_without_threads_output_or_warnings(
        tmp_path: Path) -> None:
    result = run_python("""
        import threading, pathlib, memspan
        memspan.configure(service_name="job", output_dir="out", dump_dir="dumps")
        with memspan.phase("before"):
            pass
        memspan.shutdown()
        sizes = {p.name: p.stat().st_size for p in pathlib.Path("out").iterdir()}
        with memspan.phase("after") as scope:
            with memspan.phase("inner"):
                pass
        handle = memspan.enter_phase("handle")
        handle.close()
        threads = sorted(t.name for t in threading.enumerate() if t.name.startswith("memspan"))
        print("threads", threads)
        print("unchanged", sizes == {p.name: p.stat().st_size
                                     for p in pathlib.Path("out").iterdir()})
        memspan.configure(service_name="job", output_dir="out2", dump_dir="dumps")
        with memspan.phase("again"):
            pass
        memspan.shutdown()
        print("again", "again" in pathlib.Path("out2/traces.jsonl").read_text())
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "threads []" in lines and "unchanged True" in lines and "again True" in lines
    for complaint in ("A shutdown MeterProvider", "already shutdown", "Traceback", "WARNING"):
        assert complaint not in result.stderr, result.stderr
    assert "before" in (tmp_path / "out" / "traces.jsonl").read_text()
    assert "after" not in (tmp_path / "out" / "traces.jsonl").read_text()


def test_a_phase_in_an_atexit_handler_after_memspans_passes_through(tmp_path: Path) -> None:
    result = run_python("""
        import atexit, threading

        def late():  # registered before memspan's own exit handler, so it runs after it
            import memspan
            with memspan.phase("at-exit"):
                pass
            names = [t.name for t in threading.enumerate() if t.name.startswith("memspan")]
            print("late threads", names, flush=True)

        atexit.register(late)
        import memspan
        memspan.configure(service_name="job", output_dir="out", dump_dir="dumps")
        with memspan.phase("work"):
            pass
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "late threads []" in result.stdout
    assert "A shutdown MeterProvider" not in result.stderr
    assert "already shutdown" not in result.stderr, result.stderr
    traces = (tmp_path / "out" / "traces.jsonl").read_text()
    assert "work" in traces and "at-exit" not in traces


# -- configure() after the session started (issue 19, "Lifecycle") ------------------------------
QUICK_START = """
    import memspan
    memspan.configure(service_name="trainer", output_dir="mine-out", dump_dir="mine-dumps")
    with memspan.phase("train"):
        with memspan.phase("step"):
            pass
    print("trained", flush=True)
"""

DECORATED_MAIN = """
    import time, memspan

    @memspan.phase("main")
    def main():
        memspan.configure(service_name="job", output_dir="out", dump_dir="dumps",
                          export_interval_s=0.2)
        with memspan.phase("step"):
            time.sleep(0.3)

    main()
    print("done", flush=True)
"""


def _lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


def _one_line(text: str, needle: str) -> str:
    lines = _lines(text, needle)
    assert len(lines) == 1, text
    return lines[0]


def test_the_quick_start_under_memspan_run_joins_the_session_and_says_what_it_kept(
        tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(textwrap.dedent(QUICK_START))
    result = memspan_run(tmp_path, "--", sys.executable, "train.py")
    assert result.returncode == 0, result.stderr
    assert "trained" in result.stdout
    assert "already called" not in result.stderr, result.stderr
    joined = _one_line(result.stderr, "configure() joined")
    # the launcher's directories stay: it reads the breadcrumbs back and writes its span there
    assert "output_dir stays" in joined and "memspan run --output-dir" in joined
    assert "dump_dir stays" in joined and "memspan run --dump-dir" in joined
    assert "applied: service_name='trainer'" in joined
    assert not (tmp_path / "mine-out").exists() and not (tmp_path / "mine-dumps").exists()
    services = phase_services(tmp_path / "memspan-out")
    assert services["train"] == services["step"] == {"trainer"}
    assert metric_services(tmp_path / "memspan-out")["process.memory.usage"] == {"trainer"}


def test_configure_under_opentelemetry_instrument_applies_its_settings_and_a_second_call_warns(
        tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(textwrap.dedent("""
        import memspan
        memspan.configure(service_name="trainer", dump_dir="mine-dumps")
        try:
            with memspan.phase("load"):
                raise MemoryError("the job's own")
        except MemoryError:
            print("caught", flush=True)
        memspan.configure(service_name="again")  # the user's second call
    """))
    env = clean_env(OTEL_TRACES_EXPORTER="memspan_file", OTEL_METRICS_EXPORTER="memspan_file",
                    OTEL_LOGS_EXPORTER="none", MEMSPAN_OUTPUT_DIR="out", MEMSPAN_QUIET="true")
    result = run_instrumented(script, tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "caught" in result.stdout
    assert not _lines(result.stderr, "configure() joined"), result.stderr  # all of it applied
    assert len(_lines(result.stderr, "already called")) == 1, result.stderr
    assert len(list_bundles(str(tmp_path / "mine-dumps"))) == 1
    assert not (tmp_path / "oom_dumps").exists()
    assert phase_services(tmp_path / "out")["load"] == {"trainer"}


def test_a_decorated_function_that_configures_says_its_phase_is_lost_and_metrics_survive(
        tmp_path: Path) -> None:
    result = run_python(DECORATED_MAIN, tmp_path)
    assert result.returncode == 0, result.stderr
    warning = _one_line(result.stderr, "opened before memspan.configure()")
    assert "phase 'main'" in warning and "is not exported" in warning
    assert "call memspan.configure() before the phase opens" in warning
    services = phase_services(tmp_path / "out")
    assert "step" in services and "main" not in services
    # the session that phase started cannot shadow the instruments of configure()'s
    assert metric_services(tmp_path / "out")["process.memory.usage"] == {"job"}


def test_a_decorated_function_that_configures_keeps_its_phase_under_memspan_run(
        tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text(textwrap.dedent(DECORATED_MAIN))
    result = memspan_run(tmp_path, "--", sys.executable, "main.py")
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout
    assert "already called" not in result.stderr
    assert not _lines(result.stderr, "opened before memspan.configure()"), result.stderr
    spans = {}
    for resource, scope in resource_lines(tmp_path / "memspan-out" / "traces.jsonl"):
        for span in scope["spans"]:
            spans[span["name"]] = (resource["service.name"],
                                   attrs(span["attributes"]).get("memspan.phase.path"))
    assert spans["main"] == ("job", "main")
    assert spans["step"] == ("job", "main / step")
