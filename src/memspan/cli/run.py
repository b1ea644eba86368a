"""``memspan run [options] -- CMD ...``: run a child under memspan and explain how it ended.

The child runs with the same auto-instrumentation mechanism as ``opentelemetry-instrument``
(the OTel ``sitecustomize`` directory first on ``PYTHONPATH``), the embedded default output
when the user configured no exporter, and breadcrumbs on. Its stdout/stderr stream through
unchanged while a bounded tail is kept; the cgroup's counters are read before and after. On
exit the death is classified (SIGKILL, cgroup OOM kills, output markers, peak vs limit),
leftover breadcrumbs become bundles, one ``memspan.run`` span records it all, a one-paragraph
summary is printed, and memspan exits with the child's status (128 + N for signal N, as a
shell reports it).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from memspan import names
from memspan.bootstrap import install_providers, shutdown_providers, user_configured_exporters
from memspan.config import ConfigError, MemspanConfig
from memspan.launcher.breadcrumb_bundles import bundles_from_breadcrumbs
from memspan.launcher.exit_classify import ProcessExitClassification, classify_process_exit
from memspan.launcher.sizes import format_mib, parse_memory_size
from memspan.sources.cgroup import CgroupMemorySource, CgroupReading
from memspan.version import __version__

TAIL_BYTES = 64 * 1024


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="run a command under memspan and classify how it exited",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dump-dir", help="bundle directory (default: MEMSPAN_DUMP_DIR or oom_dumps)")
    parser.add_argument("--output-dir", help="embedded default output (default: memspan-out)")
    parser.add_argument("--memory-limit", type=_memory_size,
                        help="the child's memory limit (8g, 512Mi, ...); default: the cgroup's")
    parser.add_argument("--service-name", default=None, help="service.name of the child")
    parser.add_argument("--no-breadcrumbs", action="store_true",
                        help="do not write SIGKILL breadcrumbs")
    parser.add_argument("--cgroup-proc-root", default="/proc", help=argparse.SUPPRESS)
    parser.add_argument("--cgroup-sys-root", default="/sys", help=argparse.SUPPRESS)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    parser.set_defaults(handler=run_command)


def _memory_size(text: str) -> int:
    try:
        return parse_memory_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def child_environment(config: MemspanConfig, dump_dir: str, output_dir: str,
                      breadcrumbs: bool, service_name: str | None) -> dict[str, str]:
    from opentelemetry.instrumentation import auto_instrumentation

    env = dict(os.environ)
    sitecustomize_dir = os.path.dirname(os.path.abspath(auto_instrumentation.__file__))
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != sitecustomize_dir]
    if os.getcwd() not in paths:
        paths.insert(0, os.getcwd())
    env["PYTHONPATH"] = os.pathsep.join([sitecustomize_dir, *paths])
    if not user_configured_exporters(env):
        env["OTEL_TRACES_EXPORTER"] = "memspan_file"
        env["OTEL_METRICS_EXPORTER"] = "memspan_file"
        env.setdefault("OTEL_LOGS_EXPORTER", "none")
        env["MEMSPAN_OUTPUT_DIR"] = output_dir
    detectors = [d for d in env.get("OTEL_EXPERIMENTAL_RESOURCE_DETECTORS", "otel").split(",") if d]
    if "memspan" not in detectors:
        detectors.append("memspan")
    env["OTEL_EXPERIMENTAL_RESOURCE_DETECTORS"] = ",".join(detectors)
    env["MEMSPAN_DUMP_DIR"] = dump_dir
    if breadcrumbs:
        env.setdefault("MEMSPAN_BREADCRUMBS", "true")
    if service_name:
        env["OTEL_SERVICE_NAME"] = service_name
    return env


class _Tail:
    """The last ``limit`` bytes written through one pipe."""

    def __init__(self, limit: int) -> None:
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._limit = limit

    def add(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._chunks[0]) >= self._limit:
            self._size -= len(self._chunks.popleft())

    def text(self) -> str:
        return b"".join(self._chunks)[-self._limit:].decode("utf-8", "replace")


def _pump(source: IO[bytes], sink: IO[bytes], tail: _Tail) -> None:
    for chunk in iter(lambda: source.read1(65536) if hasattr(source, "read1") else source.read(65536), b""):
        sink.write(chunk)
        sink.flush()
        tail.add(chunk)


def run_command(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        print("memspan run: no command given; usage: memspan run [options] -- CMD ...",
              file=sys.stderr)
        return 2
    try:
        config = MemspanConfig.from_env()
    except ConfigError as error:
        print(f"memspan run: {error}", file=sys.stderr)
        return 2
    dump_dir = os.path.abspath(args.dump_dir or config.dump_dir)
    output_dir = os.path.abspath(args.output_dir or config.output_dir)
    config = config.replace(dump_dir=dump_dir, output_dir=output_dir)
    cgroup = CgroupMemorySource(args.cgroup_proc_root, args.cgroup_sys_root)
    before = cgroup.read()
    env = child_environment(config, dump_dir, output_dir, not args.no_breadcrumbs,
                            args.service_name)
    started = time.time()
    try:
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as error:
        print(f"memspan run: cannot start {command[0]!r}: {error}", file=sys.stderr)
        return 127
    tails = (_Tail(TAIL_BYTES), _Tail(TAIL_BYTES))
    assert child.stdout is not None and child.stderr is not None
    pumps = [threading.Thread(target=_pump, args=(child.stdout, sys.stdout.buffer, tails[0]),
                              daemon=True),
             threading.Thread(target=_pump, args=(child.stderr, sys.stderr.buffer, tails[1]),
                              daemon=True)]
    for pump in pumps:
        pump.start()
    exit_code, peak = _wait(child)
    for pump in pumps:
        pump.join(timeout=5)
    after = cgroup.read()
    limit = args.memory_limit if args.memory_limit is not None else (
        after.limit_bytes if after is not None else None)
    classification = classify_process_exit(
        exit_code,
        oom_kills_before=before.oom_kills if before else None,
        oom_kills_after=after.oom_kills if after else None,
        output_tail=tails[0].text() + "\n" + tails[1].text(),
        peak_bytes=peak,
        limit_bytes=limit,
    )
    bundles = bundles_from_breadcrumbs(dump_dir, classification, max_dumps=config.max_dumps,
                                       max_total_mb=config.max_total_mb)
    _record_span(config, args.service_name, command, child.pid, started, classification,
                 bundles, before, after)
    print(summary(command, classification, bundles), file=sys.stderr)
    return exit_code if exit_code >= 0 else 128 - exit_code


def _wait(child: subprocess.Popen[bytes]) -> tuple[int, int | None]:
    """Wait for the child (forwarding SIGINT/SIGTERM); its exit code and peak RSS."""
    forwarded = {}

    def forward(signum: int, _frame: Any) -> None:
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            forwarded[signum] = signal.signal(signum, forward)
    try:
        while True:
            try:
                _, status, usage = os.wait4(child.pid, 0)
                break
            except InterruptedError:
                continue
    finally:
        for signum, handler in forwarded.items():
            signal.signal(signum, handler)
    code = os.waitstatus_to_exitcode(status)
    child.returncode = code
    peak = int(usage.ru_maxrss) * (1 if sys.platform == "darwin" else 1024)
    return code, peak or None


def _record_span(config: MemspanConfig, service_name: str | None, command: Sequence[str],
                 pid: int, started: float, c: ProcessExitClassification, bundles: list[str],
                 before: CgroupReading | None, after: CgroupReading | None) -> None:
    providers = install_providers(config, service_name or "memspan-run")
    tracer = trace.get_tracer(names.INSTRUMENTATION_NAME, __version__,
                              schema_url=names.SCHEMA_URL)
    span = tracer.start_span("memspan.run", start_time=int(started * 1e9), attributes={
        "process.command_args": list(command),
        "process.pid": pid,
        "process.exit.code": c.exit_code,
    })
    if c.peak_bytes is not None:
        span.set_attribute("memspan.run.peak_bytes", c.peak_bytes)
    if c.limit_bytes is not None:
        span.set_attribute("memspan.run.limit_bytes", c.limit_bytes)
    if before is not None and after is not None and before.oom_kills is not None \
            and after.oom_kills is not None:
        span.set_attribute("memspan.run.cgroup_oom_kills", after.oom_kills - before.oom_kills)
    if c.is_oom:
        event: dict[str, Any] = {names.OOM_KIND: c.kind or "oom_killed",
                                 names.OOM_REASON: c.reason,
                                 names.OOM_CONFIDENCE: c.confidence or "possible"}
        if c.suggestion:
            event[names.OOM_SUGGESTION] = c.suggestion
        if bundles:
            event[names.OOM_DUMP_PATH] = bundles[-1]
            event[names.FILE_PATH] = bundles[-1]
            span.set_attribute(names.OOM_DUMP_PATH, bundles[-1])
        span.add_event(names.OOM_EVENT, event)
    if c.exit_code != 0:
        span.set_status(Status(StatusCode.ERROR, c.reason))
    span.end()
    if providers.owned:
        shutdown_providers(providers.owned, 10.0)
    else:
        provider = trace.get_tracer_provider()
        flush = getattr(provider, "force_flush", None)
        if flush is not None:
            flush()


def summary(command: Sequence[str], c: ProcessExitClassification, bundles: list[str]) -> str:
    shown = " ".join(command)
    if c.exit_code == 0:
        text = f"memspan: `{shown}` exited normally."
    elif c.exit_code < 0:
        name = signal.Signals(-c.exit_code).name if -c.exit_code in signal.valid_signals() else "?"
        text = f"memspan: `{shown}` was killed by {name} (exit {c.exit_code})."
    else:
        text = f"memspan: `{shown}` exited with status {c.exit_code}."
    if c.is_oom:
        text += f" Out-of-memory kill {c.confidence} ({c.reason})."
    if c.peak_bytes is not None:
        text += f" Peak RSS {format_mib(c.peak_bytes)}"
        text += f" of a {format_mib(c.limit_bytes)} limit." if c.limit_bytes else "."
    if c.suggestion:
        text += f" Suggestion: {c.suggestion}."
    if bundles:
        text += f" Evidence: {bundles[-1]} (from the process's breadcrumbs)."
    return text
