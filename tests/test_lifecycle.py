"""After ``memspan.shutdown()`` (and so in atexit handlers that run after memspan's), phases
pass through: no thread starts again, nothing more is written, the SDK warns of nothing;
``configure()`` starts a new session."""

from __future__ import annotations

from pathlib import Path

from launcher_helpers import run_python


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
