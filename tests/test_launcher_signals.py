"""``memspan run`` delivers Ctrl-C to the child exactly once (issue 12 #7).

The child saves a file for 0.5 s in its ``KeyboardInterrupt`` handler; a second SIGINT
would interrupt the save. It is signalled as a terminal would (the whole foreground
process group, through a real pseudo-terminal, and with ``killpg``) and as a supervisor
would (memspan's pid only). Real signals, real subprocesses.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import subprocess
import sys
import termios
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher_helpers import clean_env

CHILD = textwrap.dedent("""
    import os, pathlib, signal, sys, time
    out = pathlib.Path("checkpoint.txt")
    # Every delivery of a signal to the interpreter writes one byte here, even when two
    # deliveries end up raising a single KeyboardInterrupt.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    try:
        print("ready", flush=True)
        time.sleep(60)
    except KeyboardInterrupt:
        try:
            out.write_text("saving")
            time.sleep(0.5)
            out.write_text("saved")
        except KeyboardInterrupt:
            out.write_text("interrupted while saving")
            raise
    time.sleep(0.2)
    try:
        deliveries = len(os.read(wake_r, 100))
    except BlockingIOError:
        deliveries = 0
    pathlib.Path("deliveries.txt").write_text(str(deliveries))
    print("bye", flush=True)
""")


def _wait_for(read: Callable[[], bytes], needle: bytes, deadline_s: float = 60) -> bytes:
    seen = b""
    end = time.monotonic() + deadline_s
    while needle not in seen:
        assert time.monotonic() < end, f"never saw {needle!r}: {seen!r}"
        seen += read()
    return seen


@pytest.mark.parametrize("target", ["group", "pid"])
def test_sigint_reaches_the_child_once(tmp_path: Path, target: str) -> None:
    (tmp_path / "child.py").write_text(CHILD)
    proc = subprocess.Popen([sys.executable, "-m", "memspan", "run", "--", sys.executable,
                             "child.py"], cwd=tmp_path, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)  # no terminal: memspan leads its group
    assert proc.stdout is not None
    fd = proc.stdout.fileno()

    def read() -> bytes:
        ready, _, _ = select.select([fd], [], [], 1.0)
        return os.read(fd, 4096) if ready else b""

    _wait_for(read, b"ready")
    if target == "group":
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole group
    else:
        os.kill(proc.pid, signal.SIGINT)  # what a supervisor does: memspan's pid
    _, stderr = proc.communicate(timeout=60)
    assert (tmp_path / "checkpoint.txt").read_text() == "saved", stderr
    assert proc.returncode == 0, stderr
    assert (tmp_path / "deliveries.txt").read_text() == "1"


@pytest.mark.parametrize("how", ["ctrl-c", "kill-pid"])
def test_sigint_on_a_real_terminal_reaches_the_child_once(tmp_path: Path, how: str) -> None:
    """memspan is the foreground job of a pseudo-terminal; ^C is typed into it (the
    terminal signals the group), or SIGINT is sent to memspan's pid alone (forwarded)."""
    (tmp_path / "child.py").write_text(CHILD)
    try:
        master, slave = pty.openpty()
    except OSError as error:
        pytest.skip(f"no pseudo-terminals here: {error}")

    def controlling_terminal() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "memspan", "run", "--", sys.executable,
                             "child.py"], cwd=tmp_path, env=clean_env(), stdin=slave,
                            stdout=slave, stderr=slave, preexec_fn=controlling_terminal)
    os.close(slave)

    def read() -> bytes:
        ready, _, _ = select.select([master], [], [], 1.0)
        try:
            return os.read(master, 4096) if ready else b""
        except OSError:
            return b""

    try:
        seen = _wait_for(read, b"ready")
        if how == "ctrl-c":
            os.write(master, b"\x03")  # the terminal sends SIGINT to its foreground group
        else:
            os.kill(proc.pid, signal.SIGINT)
        end = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < end:
            seen += read()
        seen += read()
        assert proc.returncode == 0, seen.decode(errors="replace")
        assert (tmp_path / "checkpoint.txt").read_text() == "saved"
        assert (tmp_path / "deliveries.txt").read_text() == "1"
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
