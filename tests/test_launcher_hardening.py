"""``memspan run`` against hostile directories, misbehaving children and its own failures
(issue 12 #1, #2, #6, #8, #9, #10, #12, #16; issue 13's ``memspan run`` items).

Every test runs the real CLI in a subprocess with real children.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import textwrap
import time
from pathlib import Path

import pytest

from launcher_helpers import attrs, clean_env, dead_pid, memspan_run, run_spans
from memspan.launcher.command_args import child_service_name, redact_args
from memspan.launcher.memory_limit import MemoryLimitError, create_limit_group
from memspan.oom.retention import list_bundles

PY = sys.executable
STARTED = "started.txt"


def marker_child(tmp_path: Path, body: str = "") -> list[str]:
    """A child that proves it started by writing started.txt."""
    (tmp_path / "child.py").write_text(
        f"import pathlib\npathlib.Path({STARTED!r}).write_text('yes')\n" + textwrap.dedent(body))
    return ["--", PY, "child.py"]


def write_breadcrumb(path: Path, pid: int, started_at: float, rss: int = 1 << 20) -> None:
    header = {"type": "breadcrumb_header", "pid": pid, "rank": 0, "started_at": started_at}
    event = {"seq": 1, "ts": started_at, "type": "phase_start", "path": "old / step",
             "scope_id": "x:1", "rss": rss}
    path.write_text(json.dumps(header) + "\n" + json.dumps(event) + "\n")


# -- #8: directories checked before the child starts; the child's status is memspan's ------
@pytest.mark.parametrize("how", ["--dump-dir", "MEMSPAN_DUMP_DIR", "--output-dir",
                                 "MEMSPAN_OUTPUT_DIR"])
def test_a_directory_that_is_a_file_stops_before_the_child(tmp_path: Path, how: str) -> None:
    (tmp_path / "afile").write_text("x")
    env = clean_env()
    args: list[str] = []
    if how.startswith("--"):
        args = [how, str(tmp_path / "afile")]
    else:
        env[how] = str(tmp_path / "afile")
    result = memspan_run(tmp_path, *args, *marker_child(tmp_path), env=env)
    assert result.returncode == 2, result.stderr
    assert "not a directory" in result.stderr and "afile" in result.stderr
    assert "not started" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / STARTED).exists()


def test_a_post_mortem_failure_keeps_the_childs_status(tmp_path: Path) -> None:
    """The child replaces memspan's output directory by a file: the run span cannot be
    written, yet memspan exits with the child's status and only warns."""
    args = marker_child(tmp_path, """
        import os, shutil, sys
        out = os.environ["MEMSPAN_OUTPUT_DIR"]
        shutil.rmtree(out, ignore_errors=True)
        pathlib.Path(out).write_text("not a directory")
        sys.exit(5)
    """)
    result = memspan_run(tmp_path, *args)
    assert (tmp_path / STARTED).exists()
    assert result.returncode == 5, result.stderr
    assert "memspan run: warning:" in result.stderr
    assert "Traceback" not in result.stderr.split("memspan run: warning:", 1)[1]


def test_a_breadcrumb_linked_to_dev_zero_is_refused_with_a_bound(tmp_path: Path) -> None:
    crumbs = tmp_path / "oom_dumps/.breadcrumbs"
    crumbs.mkdir(parents=True, mode=0o700)
    planted = [dead_pid(), dead_pid()]
    (crumbs / f"r0_p{planted[0]}.jsonl").symlink_to("/dev/zero")
    fifo = crumbs / f"r1_p{planted[1]}.jsonl"
    os.mkfifo(fifo)
    result = memspan_run(tmp_path, "--", PY, "-c", "import os; os.kill(os.getpid(), 9)",
                         timeout=60)
    assert result.returncode == 137, result.stderr
    assert "refused" in result.stderr and "symlink" in result.stderr
    assert "not a regular file" in result.stderr
    # no bundle from what was planted (the killed child's own breadcrumb may make one: under
    # load its sampler records before the kill, which is evidence of its own)
    assert [b for b in list_bundles(str(tmp_path / "oom_dumps"))
            if b.sort_key[1] in planted] == []
    assert (crumbs / fifo.name).exists()  # nothing not ours is deleted either


# -- #1: a .breadcrumbs that is a symlink or not ours --------------------------------------
def test_a_symlinked_breadcrumbs_dir_is_neither_read_nor_emptied(tmp_path: Path) -> None:
    target = tmp_path / "victim_dir"
    target.mkdir()
    victim = target / f"r0_p{dead_pid()}.jsonl"
    write_breadcrumb(victim, 1, time.time() + 10)
    (tmp_path / "oom_dumps").mkdir()
    (tmp_path / "oom_dumps/.breadcrumbs").symlink_to(target)
    result = memspan_run(tmp_path, "--", PY, "-c", "import os; os.kill(os.getpid(), 9)")
    assert result.returncode == 137
    assert victim.exists()  # not deleted, not turned into "evidence"
    assert list_bundles(str(tmp_path / "oom_dumps")) == []
    assert "symlink" in result.stderr and "breadcrumbs are off" in result.stderr
    (span,) = run_spans(tmp_path / "memspan-out")
    assert attrs(span["attributes"])["memspan.run.refused_paths"] == "1"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create a directory of another user")
def test_a_breadcrumbs_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    crumbs = tmp_path / "oom_dumps/.breadcrumbs"
    crumbs.mkdir(parents=True)
    planted = crumbs / f"r0_p{dead_pid()}.jsonl"
    write_breadcrumb(planted, 1, time.time() + 10)
    os.chown(crumbs, 65534, 65534)
    result = memspan_run(tmp_path, "--", PY, "-c", "import os; os.kill(os.getpid(), 9)")
    assert result.returncode == 137
    assert planted.exists() and list_bundles(str(tmp_path / "oom_dumps")) == []
    assert "owned by uid 65534" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make a symlink of another user")
def test_a_dump_dir_symlink_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    (tmp_path / "victim").mkdir()
    (tmp_path / "shared_dumps").symlink_to(tmp_path / "victim")
    os.lchown(tmp_path / "shared_dumps", 65534, 65534)
    result = memspan_run(tmp_path, "--dump-dir", str(tmp_path / "shared_dumps"),
                         *marker_child(tmp_path))
    assert result.returncode == 2
    assert "symlink owned by uid 65534" in result.stderr
    assert not (tmp_path / STARTED).exists() and list((tmp_path / "victim").iterdir()) == []


# -- #6: the dump directory deleted mid-run ------------------------------------------------
def test_breadcrumbs_recover_after_the_dump_dir_is_deleted_mid_run(tmp_path: Path) -> None:
    (tmp_path / "child.py").write_text(textwrap.dedent("""
        import os, shutil, signal, memspan
        with memspan.phase("train"):
            shutil.rmtree("oom_dumps")
            with memspan.phase("after_delete"):
                os.kill(os.getpid(), signal.SIGKILL)
    """))
    result = memspan_run(tmp_path, "--", PY, "child.py")
    assert result.returncode == 137, result.stderr
    assert (tmp_path / "oom_dumps").stat().st_mode & 0o777 == 0o700
    (bundle,) = list_bundles(str(tmp_path / "oom_dumps"))
    manifest = json.loads(Path(bundle.path, "manifest.json").read_text())
    assert manifest["phase_path"] == "train / after_delete"


# -- issue 13: a SIGKILL in the first 0.1 s keeps the phase stack -------------------------
def test_sigkill_right_after_the_first_phases_keeps_the_stack(tmp_path: Path) -> None:
    (tmp_path / "child.py").write_text(textwrap.dedent("""
        import os, signal, memspan
        with memspan.phase("train", batch_size=64):
            with memspan.phase("step"):
                with memspan.phase("forward"):
                    os.kill(os.getpid(), signal.SIGKILL)
    """))
    result = memspan_run(tmp_path, "--", PY, "child.py")
    assert result.returncode == 137, result.stderr
    (bundle,) = list_bundles(str(tmp_path / "oom_dumps"))
    phases = json.loads(Path(bundle.path, "phases.json").read_text())
    assert [p["path"] for p in phases] == ["train", "train / step", "train / step / forward"]


# -- #9: no false crash bundles; stale breadcrumbs ------------------------------------------
POOL_CHILD = """
    import multiprocessing as mp, memspan

    def work(x):
        with memspan.phase("work"):
            return x * x

    if __name__ == "__main__":
        with memspan.phase("main"):
            pool = mp.get_context("spawn").Pool(2)
            print(sum(pool.map(work, range(8))), flush=True)
            pool.terminate()
            pool.join()
"""


def test_a_spawn_pool_terminated_normally_leaves_no_bundle(tmp_path: Path) -> None:
    args = marker_child(tmp_path, POOL_CHILD)
    result = memspan_run(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    assert "140" in result.stdout
    assert list_bundles(str(tmp_path / "oom_dumps")) == []
    assert not [p for p in (tmp_path / "oom_dumps/.breadcrumbs").iterdir()
                if p.name.endswith(".jsonl")]
    (span,) = run_spans(tmp_path / "memspan-out")
    # the terminated workers did leave breadcrumbs: found, and discarded for lack of evidence
    assert int(attrs(span["attributes"])["memspan.run.breadcrumbs.discarded"]) >= 1
    assert "without evidence of an abnormal death were discarded" in result.stderr


def test_breadcrumbs_from_an_earlier_run_are_stale_not_evidence(tmp_path: Path) -> None:
    crumbs = tmp_path / "oom_dumps/.breadcrumbs"
    crumbs.mkdir(parents=True, mode=0o700)
    stale = crumbs / f"r0_p{dead_pid()}.jsonl"
    write_breadcrumb(stale, 1, time.time() - 3600)
    result = memspan_run(tmp_path, "--", PY, "-c", "import os; os.kill(os.getpid(), 9)")
    assert result.returncode == 137
    assert list_bundles(str(tmp_path / "oom_dumps")) == []
    assert stale.exists()
    assert "1 stale breadcrumb file(s) from earlier runs" in result.stderr
    (span,) = run_spans(tmp_path / "memspan-out")
    assert attrs(span["attributes"])["memspan.run.breadcrumbs.stale"] == "1"


# -- #10: grandchildren keep their output pipe ---------------------------------------------
def test_a_background_grandchild_is_not_killed_by_sigpipe(tmp_path: Path) -> None:
    (tmp_path / "grandchild.py").write_text(textwrap.dedent("""
        import pathlib, sys, time
        for i in range(13):
            print(f"tick {i}", flush=True)
            time.sleep(0.5)
        pathlib.Path("grandchild_done").write_text("ok")
    """))
    (tmp_path / "child.py").write_text(textwrap.dedent(f"""
        import subprocess
        subprocess.Popen([{PY!r}, "grandchild.py"], stderr=subprocess.DEVNULL)
        print("child leaves", flush=True)
    """))
    result = memspan_run(tmp_path, "--", PY, "child.py")
    assert result.returncode == 0, result.stderr
    assert "tick 12" in result.stdout
    assert (tmp_path / "grandchild_done").read_text() == "ok"


# -- #2: secrets on the command line --------------------------------------------------------
def test_command_args_are_not_exported_by_default(tmp_path: Path) -> None:
    result = memspan_run(tmp_path, "--", PY, "-c", "pass", "--hf-token", "hf_SECRET1",
                         "--api-key=hf_SECRET2")
    assert result.returncode == 0
    for path in (tmp_path / "memspan-out").iterdir():
        assert "hf_SECRET" not in path.read_text(), path
    assert "hf_SECRET" not in result.stderr
    (span,) = run_spans(tmp_path / "memspan-out")
    span_attrs = attrs(span["attributes"])
    assert "process.command_args" not in span_attrs
    assert span_attrs["process.executable.name"] == os.path.basename(PY)


def test_exported_args_are_redacted(tmp_path: Path) -> None:
    result = memspan_run(tmp_path, "--export-args", "--", PY, "-c", "pass", "--hf-token",
                         "hf_SECRET1", "--api-key=hf_SECRET2", "--epochs", "3")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "memspan-out/traces.jsonl").read_text()
    assert "hf_SECRET" not in text
    (span,) = run_spans(tmp_path / "memspan-out")
    assert attrs(span["attributes"])["process.command_args"] == [
        PY, "-c", "pass", "--hf-token", "<redacted>", "--api-key=<redacted>", "--epochs", "3"]


@pytest.mark.parametrize(("argv", "expected"), [
    (["x", "--token", "t1"], ["x", "--token", "<redacted>"]),
    (["x", "--token=t1"], ["x", "--token=<redacted>"]),
    (["x", "--HF_TOKEN", "t1", "--lr", "3"], ["x", "--HF_TOKEN", "<redacted>", "--lr", "3"]),
    (["x", "--client-secret", "s"], ["x", "--client-secret", "<redacted>"]),
    (["x", "--password", "p", "--db-passwd=q"], ["x", "--password", "<redacted>",
                                                 "--db-passwd=<redacted>"]),
    (["x", "--auth-header", "Bearer a"], ["x", "--auth-header", "<redacted>"]),
    (["x", "--api-key", "--verbose"], ["x", "--api-key", "--verbose"]),
    (["env", "AWS_SECRET_ACCESS_KEY=abc", "x"], ["env", "AWS_SECRET_ACCESS_KEY=<redacted>", "x"]),
    (["x", "https://user:pw@host/repo"], ["x", "https://user:<redacted>@host/repo"]),
    (["x", "--epochs", "3", "data.txt"], ["x", "--epochs", "3", "data.txt"]),
])
def test_redact_args(argv: list[str], expected: list[str]) -> None:
    assert redact_args(argv) == expected


@pytest.mark.parametrize(("argv", "env", "expected"), [
    (["python", "train.py", "--x"], {}, "train"),
    (["python3.11", "-u", "/a/b/finetune.py"], {}, "finetune"),
    (["python", "-m", "pkg.trainer"], {}, "pkg.trainer"),
    (["torchrun", "--nproc_per_node=2", "t.py"], {}, "torchrun"),
    (["python", "t.py"], {"OTEL_SERVICE_NAME": "svc"}, "svc"),
    (["python", "t.py"], {"OTEL_RESOURCE_ATTRIBUTES": "a=b,service.name=res"}, "res"),
])
def test_child_service_name(argv: list[str], env: dict[str, str], expected: str) -> None:
    assert child_service_name(argv, env) == expected


# -- #12: memory sizes that are not limits --------------------------------------------------
@pytest.mark.parametrize("args", [["--memory-limit", "0"], ["--memory-limit", "-1G"],
                                  ["--memory-limit=-5"], ["--compare-limit", "0"],
                                  ["--memory-limit", "0.0001k"]])
def test_zero_and_negative_limits_are_rejected_naming_the_option(tmp_path: Path,
                                                                  args: list[str]) -> None:
    result = memspan_run(tmp_path, *args, *marker_child(tmp_path))
    assert result.returncode == 2
    option = args[0].split("=")[0]
    assert option in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / STARTED).exists()


# -- #16 and issue 13: summary, markers, output excerpt, service name ---------------------
def test_summary_quotes_the_command_and_markers_are_word_bounded(tmp_path: Path) -> None:
    code = "import sys; print('CUDA OOM error', file=sys.stderr); sys.exit(1)"
    result = memspan_run(tmp_path, "--", PY, "-c", code, "it's a b")
    assert result.returncode == 1
    quoted = shlex.join([PY, "-c", code, "it's a b"])
    assert f"memspan: {quoted} exited with status 1" in result.stderr
    assert "OOM possible (text_marker:oom" in result.stderr
    (span,) = run_spans(tmp_path / "memspan-out")
    events = {e["name"]: attrs(e["attributes"]) for e in span["events"]}
    assert events["memspan.oom"]["memspan.oom.confidence"] == "possible"
    assert "CUDA OOM error" in events["memspan.run.output"]["memspan.run.output.stderr"]


def test_control_characters_in_the_command_never_reach_the_terminal(tmp_path: Path) -> None:
    result = memspan_run(tmp_path, "--", PY, "-c", "pass", "\x1b[2Jevil\x07")
    assert result.returncode == 0
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr
    assert "\\x1b[2Jevil\\x07" in result.stderr


def test_no_marker_for_zoom_on_a_failed_exit(tmp_path: Path) -> None:
    result = memspan_run(tmp_path, "--", PY, "-c", "print('Zoom in the bedroom'); exit(1)")
    assert result.returncode == 1 and "OOM" not in result.stderr


def test_the_peak_is_never_below_an_rss_seen_in_the_run(tmp_path: Path) -> None:
    """A process of this run recorded 50 GiB RSS in its breadcrumbs: ``wait4``'s peak of the
    small child must not be shown instead."""
    (tmp_path / "child.py").write_text(textwrap.dedent("""
        import json, os, pathlib, subprocess, sys, time
        helper = subprocess.Popen([sys.executable, "-c", "pass"]); helper.wait()
        crumbs = pathlib.Path("oom_dumps/.breadcrumbs")
        header = {"type": "breadcrumb_header", "pid": helper.pid, "started_at": time.time()}
        event = {"seq": 1, "ts": 0, "type": "phase_start", "path": "big", "scope_id": "s:1",
                  "rss": 50 << 30}
        (crumbs / f"r0_p{helper.pid}.jsonl").write_text(
            json.dumps(header) + "\\n" + json.dumps(event) + "\\n")
        os.kill(os.getpid(), 9)
    """))
    result = memspan_run(tmp_path, "--", PY, "child.py")
    assert result.returncode == 137, result.stderr
    assert "Peak RSS 51200 MiB" in result.stderr


def test_the_run_span_is_named_after_the_child(tmp_path: Path) -> None:
    (tmp_path / "my_trainer.py").write_text("pass\n")
    result = memspan_run(tmp_path, "--", PY, "my_trainer.py")
    assert result.returncode == 0
    (span,) = run_spans(tmp_path / "memspan-out")
    assert attrs(span["attributes"])["memspan.run.service.name"] == "my_trainer"
    line = (tmp_path / "memspan-out/traces.jsonl").read_text().splitlines()[-1]
    resource = attrs(json.loads(line)["resourceSpans"][0]["resource"]["attributes"])
    assert resource["service.name"] == "my_trainer"


# -- issue 13: --memory-limit is enforced or refused ----------------------------------------
def fake_cgroup_v2(root: Path, controllers: str) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text("0::/job\n")
    mount = root / "sys/fs/cgroup"
    (mount / "job").mkdir(parents=True)
    (mount / "cgroup.controllers").write_text(controllers + "\n")
    (mount / "job/cgroup.controllers").write_text(controllers + "\n")
    (mount / "job/cgroup.subtree_control").write_text("")
    return mount / "job"


def test_memory_limit_is_refused_where_it_cannot_be_enforced(tmp_path: Path) -> None:
    fake_cgroup_v2(tmp_path / "cg", "cpu io")
    result = memspan_run(tmp_path, "--memory-limit", "64m", "--cgroup-proc-root",
                         str(tmp_path / "cg/proc"), "--cgroup-sys-root", str(tmp_path / "cg/sys"),
                         *marker_child(tmp_path))
    assert result.returncode == 2
    assert "--memory-limit cannot be enforced" in result.stderr
    assert "memory controller is not available" in result.stderr
    assert "--compare-limit" in result.stderr
    assert not (tmp_path / STARTED).exists()


def test_memory_limit_creates_a_limited_group_the_child_joins(tmp_path: Path) -> None:
    """On a (fake, writable) cgroup v2 tree with the memory controller."""
    job = fake_cgroup_v2(tmp_path / "cg", "cpu memory")
    (tmp_path / "child.py").write_text(textwrap.dedent(f"""
        import os, pathlib
        group = pathlib.Path({str(job)!r}) / f"memspan-run-{{os.getppid()}}"
        pathlib.Path("seen.txt").write_text((group / "memory.max").read_text() + " " +
                                            (group / "cgroup.procs").read_text())
    """))
    result = memspan_run(tmp_path, "--memory-limit", "64m", "--cgroup-proc-root",
                         str(tmp_path / "cg/proc"), "--cgroup-sys-root", str(tmp_path / "cg/sys"),
                         "--", PY, "child.py")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "seen.txt").read_text() == f"{64 << 20} 0"
    (span,) = run_spans(tmp_path / "memspan-out")
    span_attrs = attrs(span["attributes"])
    assert span_attrs["memspan.run.limit.enforced"] is True
    assert span_attrs["memspan.run.limit_bytes"] == str(64 << 20)
    assert "of an enforced 64 MiB limit" in result.stderr


def test_memory_limit_on_this_machine(tmp_path: Path) -> None:
    """Whatever this machine allows: enforcement that OOM-kills a child going past the
    limit, or a clear refusal before the child starts."""
    try:
        group = create_limit_group(32 << 20)
    except MemoryLimitError as error:
        result = memspan_run(tmp_path, "--memory-limit", "32m", *marker_child(tmp_path))
        assert result.returncode == 2 and str(error) in result.stderr
        assert not (tmp_path / STARTED).exists()
        return
    group.remove()
    result = memspan_run(tmp_path, "--memory-limit", "32m", "--", PY, "-c",
                         "x = bytearray(256 << 20); x[::4096] = b'1' * len(x[::4096])")
    assert result.returncode == 137, result.stderr
    assert "OOM confirmed" in result.stderr


def test_a_closed_stdout_neither_blocks_the_child_nor_changes_the_status(tmp_path: Path) -> None:
    """``memspan run ... | head -1``: output is drained, the child's status comes back."""
    import subprocess

    code = "import sys\nfor i in range(200000): print('line', i)\nsys.exit(4)"
    proc = subprocess.Popen([PY, "-m", "memspan", "run", "--", PY, "-c", code], cwd=tmp_path,
                            env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().startswith(b"line 0")
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 4, stderr
    assert "Traceback" not in stderr and "exited with status 4" in stderr
