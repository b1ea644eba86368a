"""memspan run: exit classification, memory sizes, a real SIGKILLed child, and a child whose
python lacks memspan."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from launcher_helpers import memspan_run, run_spans
from memspan.launcher import classify_process_exit, parse_memory_size
from memspan.oom.retention import list_bundles

GIB = 1 << 30
MIB = 1 << 20


@pytest.mark.parametrize(("text", "expected"), [
    ("8g", 8 * GIB), ("8G", 8 * GIB), ("8gb", 8 * GIB), ("8GiB", 8 * GIB), ("8Gi", 8 * GIB),
    ("512Mi", 512 * MIB), ("4096m", 4096 * MIB), ("1.5Gi", int(1.5 * GIB)), ("1.5G", int(1.5 * GIB)),
    ("1048576", 1048576), ("0", 0), ("2T", 2 << 40), ("64k", 64 << 10), (" 16 Mi ", 16 * MIB),
])
def test_parse_memory_size(text: str, expected: int) -> None:
    assert parse_memory_size(text) == expected


@pytest.mark.parametrize("text", ["g", "", "  ", "-1G", "-5", "eight", "8x", "1.5", "8 GB GB", "Gi8"])
def test_parse_memory_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid memory size"):
        parse_memory_size(text)


def test_classify_sigkill_confirmed_by_cgroup() -> None:
    c = classify_process_exit(-9, oom_kills_before=0, oom_kills_after=1,
                              peak_bytes=8100 * MIB, limit_bytes=8192 * MIB)
    assert (c.is_oom, c.kind, c.confidence, c.reason) == (True, "oom_killed", "confirmed",
                                                         "cgroup:oom_kill")
    assert c.suggested_limit_bytes == 12288 * MIB
    assert c.suggestion is not None and "raise the limit to 12288 MiB" in c.suggestion


@pytest.mark.parametrize("code", [-9, 137])
def test_classify_sigkill_without_cgroup_evidence_is_likely(code: int) -> None:
    c = classify_process_exit(code, oom_kills_before=3, oom_kills_after=3)
    assert (c.is_oom, c.confidence, c.reason) == (True, "likely", f"exit_code:{code}")


def test_classify_unknown_peak_with_a_limit_suggests_considering() -> None:
    c = classify_process_exit(137, limit_bytes=8192 * MIB)
    assert c.suggestion == "peak unknown; consider raising the 8192 MiB limit to 12288 MiB"


def test_classify_peak_far_below_the_limit_suggests_nothing() -> None:
    c = classify_process_exit(-9, peak_bytes=1000 * MIB, limit_bytes=8192 * MIB)
    assert c.suggestion is None and c.suggested_limit_bytes is None


@pytest.mark.parametrize(("code", "tail"), [
    (1, "Zoom level out of range"), (1, "the bedroom is full"), (139, "Segmentation fault"),
    (0, "Killed"), (2, "skilled worker"), (1, "ZOOM"), (1, "signal 90"), (1, "roomy"),
])
def test_classify_not_oom(code: int, tail: str) -> None:
    c = classify_process_exit(code, output_tail=tail)
    assert not c.is_oom and c.kind is None


@pytest.mark.parametrize(("tail", "marker"), [
    ("RuntimeError: CUDA out of memory.", "out of memory"), ("Killed", "killed"),
    ("worker exited on signal 9", "signal 9"), ("kernel: oom-kill:constraint", "oom"),
    ("CUDA OOM error", "oom"), ("Pod OOMKilled", "oom"), ("process KILLED by watchdog", "killed"),
    ("OUT OF MEMORY", "out of memory"), ("oom_kill 1", "oom"), ("the OOM-killer ran", "oom"),
])
def test_classify_word_markers_on_a_failed_exit(tail: str, marker: str) -> None:
    c = classify_process_exit(1, output_tail=tail)
    assert (c.is_oom, c.confidence, c.reason) == (True, "possible", f"text_marker:{marker}")


def test_classify_rejects_negative_figures() -> None:
    with pytest.raises(ValueError, match="peak_bytes must be >= 0"):
        classify_process_exit(1, peak_bytes=-1)


CHILD = textwrap.dedent("""
    import os, signal, sys, time, memspan
    with memspan.phase("train"):
        with memspan.phase("step"):
            time.sleep(0.6)
            print("about to die", flush=True)
            events = sys.argv[1] if len(sys.argv) > 1 else ""
            if events:
                with open(events, "w") as handle:  # the kernel's OOM killer, played by us
                    handle.write("oom 1\\noom_kill 1\\n")
            os.kill(os.getpid(), signal.SIGKILL)
""")


def fake_cgroup(root: Path) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text("0::/job\n")
    cgroup = root / "sys/fs/cgroup"
    (cgroup / "job").mkdir(parents=True)
    (cgroup / "cgroup.controllers").write_text("memory\n")
    (cgroup / "job/memory.current").write_text(str(7 * GIB) + "\n")
    (cgroup / "job/memory.max").write_text(str(8 * GIB) + "\n")
    (cgroup / "job/memory.events").write_text("oom 0\noom_kill 0\n")
    return cgroup / "job/memory.events"


@pytest.mark.parametrize("confirmed", [True, False], ids=["cgroup-rose", "no-cgroup-evidence"])
def test_run_sigkilled_child(tmp_path: Path, confirmed: bool) -> None:
    (tmp_path / "child.py").write_text(CHILD)
    events = fake_cgroup(tmp_path / "cg")
    args = ["--cgroup-proc-root", str(tmp_path / "cg/proc"),
            "--cgroup-sys-root", str(tmp_path / "cg/sys"), "--",
            sys.executable, "child.py"] + ([str(events)] if confirmed else [])
    result = memspan_run(tmp_path, *args)
    assert result.returncode == 137, result.stderr
    assert "about to die" in result.stdout  # the child's output streams through
    (bundle,) = list_bundles(str(tmp_path / "oom_dumps"))
    manifest = json.loads(Path(bundle.path, "manifest.json").read_text())
    assert manifest["kind"] == "oom_killed" and manifest["source"] == "breadcrumb"
    assert manifest["phase_path"] == "train / step"
    assert not list((tmp_path / "oom_dumps/.breadcrumbs").iterdir())
    metadata = json.loads(Path(bundle.path, "metadata.json").read_text())
    assert "about to die" in metadata["output_tail"]["stdout"]  # the output excerpt
    assert metadata["evidence"]
    (span,) = run_spans(tmp_path / "memspan-out")
    events = {e["name"]: e for e in span["events"]}  # type: ignore[index]
    event = events["memspan.oom"]
    attrs = {a["key"]: next(iter(a["value"].values())) for a in event["attributes"]}
    output = {a["key"]: next(iter(a["value"].values()))
              for a in events["memspan.run.output"]["attributes"]}
    assert "about to die" in output["memspan.run.output.stdout"]
    assert attrs["memspan.oom.kind"] == "oom_killed"
    assert attrs["memspan.oom.confidence"] == ("confirmed" if confirmed else "likely")
    assert attrs["memspan.oom.dump.path"] == bundle.path
    span_attrs = {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}  # type: ignore[index]
    assert span_attrs["process.exit.code"] == "-9"
    assert span_attrs["process.executable.name"] == os.path.basename(sys.executable)
    assert "process.command_args" not in span_attrs
    assert span_attrs["memspan.run.service.name"] == "child"
    assert span_attrs["memspan.run.bundles"] == "1"
    assert span_attrs["memspan.run.limit.enforced"] is False
    assert span_attrs["memspan.run.limit_bytes"] == str(8 * GIB)
    assert span_attrs["memspan.run.cgroup_oom_kills"] == ("1" if confirmed else "0")
    assert int(span_attrs["memspan.run.peak_bytes"]) > 0  # type: ignore[call-overload]
    if confirmed:
        assert "OOM confirmed" in result.stderr and "OOM likely" not in result.stderr
    else:
        assert "OOM likely" in result.stderr and "OOM confirmed" not in result.stderr


def test_run_passes_the_exit_status_through(tmp_path: Path) -> None:
    result = memspan_run(tmp_path, "--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert result.returncode == 3
    assert "exited with status 3" in result.stderr
    assert "uninstrumented" not in result.stderr  # this python has memspan


def test_run_rejects_a_bad_memory_limit(tmp_path: Path) -> None:
    result = memspan_run(tmp_path, "--memory-limit", "g", "--", sys.executable, "-c", "pass")
    assert result.returncode == 2
    assert "invalid memory size 'g'" in result.stderr


def test_run_with_a_python_that_lacks_memspan_says_so_and_runs_the_job(tmp_path: Path) -> None:
    venv = tmp_path / "bare"  # a virtual environment without memspan (nor OpenTelemetry)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    job = ("import os, subprocess, sys; subprocess.run([sys.executable, '-c', 'pass']); "
           "print('job ran', os.environ['PYTHONPATH'].split(os.pathsep)[0])")
    result = memspan_run(tmp_path, "--", python, "-c", job)
    assert result.returncode == 0, result.stderr
    assert "job ran" in result.stdout  # the job itself is untouched
    assert "Error in sitecustomize" not in result.stderr and "Traceback" not in result.stderr
    # at its start, once for that interpreter (its subprocess says nothing more)...
    started = [line for line in result.stderr.splitlines() if "without memspan" in line]
    assert len(started) == 1 and python in started[0], result.stderr
    # ...and in the summary, in place of a bare "exited normally"
    (summary,) = [line for line in result.stderr.splitlines() if "exited normally" in line]
    assert f"{python} (No module named 'memspan') cannot run memspan" in summary
    assert "ran uninstrumented" in summary
    site = result.stdout.split("job ran ", 1)[1].strip()
    assert os.path.basename(site).startswith("memspan-run-") and not os.path.exists(site)
