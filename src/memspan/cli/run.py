"""``memspan run [options] -- CMD ...``: run a child under memspan and explain how it ended.

Before the child starts, the directories it will write into are checked (``--dump-dir`` /
``MEMSPAN_DUMP_DIR``, and ``--output-dir`` / ``MEMSPAN_OUTPUT_DIR`` when the embedded output
is used): a path that is a file or cannot be created is an error (exit 2, child not
started), and so is a ``--memory-limit`` this machine cannot enforce.

The child runs with the same auto-instrumentation mechanism as ``opentelemetry-instrument``
(a ``sitecustomize`` first on ``PYTHONPATH`` that calls OpenTelemetry's ``initialize()``: the
run's own, :mod:`memspan.launcher.child_site`, so a Python of the job that cannot run memspan
says so instead of failing in sitecustomize), the embedded default output when the user
configured no exporter, and breadcrumbs on. Its stdout/stderr stream through
unchanged, until whoever holds the pipes closes them, while a bounded tail is kept. Signals
reach the child once (:mod:`memspan.launcher.signals`). On exit the death is classified,
breadcrumbs with evidence of an abnormal death become bundles, one ``memspan.run`` span
records it all, a one-paragraph summary is printed (naming any Python of the job that ran
without memspan), and memspan exits with the child's status (128 + N for signal N, as a
shell reports it).

Invariant: once the child has started, memspan's exit status is the child's. A failure of
the post-mortem (bundles, span, summary) is a warning on stderr, never another status.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from memspan import environment_variables as ev
from memspan import names, otel_names
from memspan.bootstrap import (
    EXIT_DEADLINE_S,
    install_providers,
    shutdown_providers,
    user_configured_exporters,
)
from memspan.config import ConfigError, MemspanConfig
from memspan.launcher.breadcrumb_bundles import BreadcrumbOutcome, collect_breadcrumbs
from memspan.launcher.child_site import ChildSite, UninstrumentedPython, prepare_child_site
from memspan.launcher.command_args import child_service_name, executable_name, redact_args
from memspan.launcher.exit_classify import ProcessExitClassification, classify_process_exit
from memspan.launcher.memory_limit import LimitGroup, MemoryLimitError, create_limit_group
from memspan.launcher.output import Tail, start_pump
from memspan.launcher.signals import SignalForwarder, terminal_foreground
from memspan.launcher.sizes import format_mib, parse_memory_size
from memspan.oom.breadcrumbs import DIRECTORY
from memspan.oom.classify import OOMKind
from memspan.safe_files import UnsafePathError, ensure_directory
from memspan.sources.cgroup import CgroupMemorySource, CgroupReading
from memspan.version import __version__

TAIL_BYTES = 64 * 1024
#: Bytes of each stream's tail put on the ``memspan.run`` span's output event.
SPAN_EXCERPT_BYTES = 4 * 1024


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run", help="run a command under memspan and classify how it exited",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # A value such as "-1G" is a (bad) size, not an option: let the size parser name it.
    parser._negative_number_matcher = re.compile(r"^-\d")
    parser.add_argument("--dump-dir", help=f"bundle directory (default: {ev.MEMSPAN_DUMP_DIR} "
                        "or oom_dumps)")
    parser.add_argument("--output-dir", help="embedded default output (default: memspan-out)")
    parser.add_argument("--memory-limit", type=_positive_size("--memory-limit"),
                        help="enforce a memory limit on the child (8g, 512Mi, ...) with a cgroup "
                             "v2 group; refused (exit 2) where the machine does not allow it")
    parser.add_argument("--compare-limit", type=_positive_size("--compare-limit"),
                        help="a limit to compare the peak with in the summary (not enforced); "
                             "default: the cgroup's limit")
    parser.add_argument("--service-name", default=None, help=f"{names.SERVICE_NAME} of the child")
    parser.add_argument("--export-args", action="store_true",
                        help=f"export the command's arguments as {names.PROCESS_COMMAND_ARGS} "
                             "(credential-looking values redacted); default: executable only")
    parser.add_argument("--no-breadcrumbs", action="store_true",
                        help="do not write SIGKILL breadcrumbs")
    parser.add_argument("--cgroup-proc-root", default="/proc", help=argparse.SUPPRESS)
    parser.add_argument("--cgroup-sys-root", default="/sys", help=argparse.SUPPRESS)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    parser.set_defaults(handler=run_command)


def _positive_size(option: str) -> Any:
    def parse(text: str) -> int:
        try:
            value = parse_memory_size(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"{option}: {error}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(
                f"{option} must be a positive size (e.g. 8g, 512Mi), got {text!r}")
        return value
    return parse


def child_environment(config: MemspanConfig, dump_dir: str, output_dir: str,
                      breadcrumbs: bool, service_name: str | None,
                      site: ChildSite) -> dict[str, str]:
    """The child's environment: the run's ``sitecustomize`` (:mod:`memspan.launcher.child_site`)
    first on ``PYTHONPATH`` (OpenTelemetry's own taken off, so nothing starts twice), the
    embedded default output when the user configured no exporter, the dump directory,
    breadcrumbs and the service name."""
    from opentelemetry.instrumentation import auto_instrumentation

    env = dict(os.environ)
    otel_site = os.path.dirname(os.path.abspath(auto_instrumentation.__file__))
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
             if p and p not in (otel_site, site.directory)]
    if os.getcwd() not in paths:
        paths.insert(0, os.getcwd())
    env["PYTHONPATH"] = os.pathsep.join([site.directory, *paths])
    if not user_configured_exporters(env):
        env[otel_names.OTEL_TRACES_EXPORTER] = otel_names.FILE_EXPORTER
        env[otel_names.OTEL_METRICS_EXPORTER] = otel_names.FILE_EXPORTER
        env.setdefault(otel_names.OTEL_LOGS_EXPORTER, otel_names.NO_EXPORTER)
        env[ev.MEMSPAN_OUTPUT_DIR] = output_dir
    detectors = [d for d in env.get(otel_names.OTEL_EXPERIMENTAL_RESOURCE_DETECTORS,
                                    otel_names.SDK_RESOURCE_DETECTOR).split(",") if d]
    if otel_names.RESOURCE_DETECTOR not in detectors:
        detectors.append(otel_names.RESOURCE_DETECTOR)
    env[otel_names.OTEL_EXPERIMENTAL_RESOURCE_DETECTORS] = ",".join(detectors)
    env[ev.MEMSPAN_DUMP_DIR] = dump_dir
    # the launcher says where telemetry goes; the child's own line would be read back as
    # its output (and "OOM bundles" in it as a text marker)
    env.setdefault(ev.MEMSPAN_QUIET, "true")
    # the child's providers are the SDK's: bound attribute values as memspan's own are
    env.setdefault(otel_names.OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, "16384")
    if breadcrumbs:
        env.setdefault(ev.MEMSPAN_BREADCRUMBS, "true")
    if service_name:
        env[otel_names.OTEL_SERVICE_NAME] = service_name
    return env


@dataclass
class RunState:
    """What the post-mortem gathers; the summary and the span are built from it."""

    command: list[str]
    service: str
    export_args: bool
    dump_dir: str
    started: float
    pid: int = 0
    exit_code: int = 0
    peak_bytes: int | None = None
    limit_enforced: bool = False
    classification: ProcessExitClassification | None = None
    outcome: BreadcrumbOutcome = field(default_factory=BreadcrumbOutcome)
    cgroup_oom_kills: int | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    refused: list[str] = field(default_factory=list)
    #: the run's sitecustomize directory, and the interpreters that noted running without
    #: memspan there
    site: ChildSite | None = None
    uninstrumented: list[UninstrumentedPython] = field(default_factory=list)


def _warn(message: str) -> None:
    try:
        print(f"memspan run: warning: {message}", file=sys.stderr)
    except (OSError, ValueError):
        pass  # stderr is gone: the exit status still is the child's


def _fail(message: str) -> int:
    print(f"memspan run: {message}", file=sys.stderr)
    return 2


def _check_directories(dump_dir: str, output_dir: str | None, breadcrumbs: bool,
                       refused: list[str]) -> str | None:
    """Create/check the directories before the child starts; an error message, or None."""
    for label, path in ((f"--dump-dir/{ev.MEMSPAN_DUMP_DIR}", dump_dir),
                        (f"--output-dir/{ev.MEMSPAN_OUTPUT_DIR}", output_dir)):
        if path is None:
            continue
        try:
            ensure_directory(path, own_name=False)
        except OSError as error:
            return (f"{label} {path!r} cannot be used: {error.strerror or error}; "
                    "the command was not started")
    if breadcrumbs:
        crumbs = os.path.join(dump_dir, DIRECTORY)
        try:
            ensure_directory(crumbs, own_name=True)
        except UnsafePathError as error:
            refused.append(f"{crumbs} {error.strerror}")
            print(f"memspan run: warning: {crumbs} {error.strerror}; the child's breadcrumbs "
                  "are off for this run", file=sys.stderr)
        except OSError as error:
            return f"{crumbs!r} cannot be created: {error.strerror}; the command was not started"
    return None


def run_command(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        return _fail("no command given; usage: memspan run [options] -- CMD ...")
    try:
        config = MemspanConfig.from_env()
    except ConfigError as error:
        return _fail(f"{error}; the command was not started")
    dump_dir = os.path.abspath(args.dump_dir or config.dump_dir)
    output_dir = os.path.abspath(args.output_dir or config.output_dir)
    try:
        config = config.replace(dump_dir=dump_dir, output_dir=output_dir)
    except ConfigError as error:
        return _fail(f"{error}; the command was not started")
    refused: list[str] = []
    embedded = not user_configured_exporters(os.environ)
    breadcrumbs = not args.no_breadcrumbs
    problem = _check_directories(dump_dir, output_dir if embedded else None, breadcrumbs, refused)
    if problem is not None:
        return _fail(problem)
    if refused:
        breadcrumbs = False
    group: LimitGroup | None = None
    if args.memory_limit is not None:
        try:
            group = create_limit_group(args.memory_limit, proc_root=args.cgroup_proc_root,
                                       sys_root=args.cgroup_sys_root)
        except MemoryLimitError as error:
            return _fail(f"--memory-limit cannot be enforced on this machine: {error}. "
                         "Use --compare-limit SIZE to only compare the peak with a limit; "
                         "the command was not started")
    try:
        site = prepare_child_site(check_memspan_loads=not _memspan_disabled(os.environ))
    except OSError as error:
        if group is not None:
            group.remove()
        return _fail(f"cannot write the child's sitecustomize ({error.strerror or error}); "
                     "the command was not started")
    env = child_environment(config, dump_dir, output_dir, breadcrumbs, args.service_name, site)
    _drop_bad_metric_intervals(env)
    if not breadcrumbs:
        env[ev.MEMSPAN_BREADCRUMBS] = "false"
    service = child_service_name(command, env)
    if not env.get(otel_names.OTEL_SERVICE_NAME):
        env[otel_names.OTEL_SERVICE_NAME] = service  # the child's telemetry and the run span agree
    state = RunState(command, service, bool(args.export_args), dump_dir, time.time(), refused=refused,
                     limit_enforced=group is not None, site=site)
    try:
        return _run(args, config, env, group, state)
    finally:
        site.remove()
        if group is not None:
            warning = group.remove()
            if warning:
                _warn(warning)


def _drop_bad_metric_intervals(env: dict[str, str]) -> None:
    """A bad ``OTEL_METRIC_EXPORT_INTERVAL``/``_TIMEOUT`` would make the SDK's metric reader
    raise in the child's auto-initialisation (tracebacks, no metrics): one line here, and the
    child runs with the SDK's default instead."""
    for name in (ev.OTEL_METRIC_EXPORT_INTERVAL, ev.OTEL_METRIC_EXPORT_TIMEOUT):
        try:
            ev.read(name, env)
        except ConfigError as error:
            _warn(f"{error}; ignored: the command runs with the SDK's default")
            env.pop(name, None)


def _memspan_disabled(env: Mapping[str, str]) -> bool:
    """Whether the user turned memspan off for the child (``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``
    names it, or ``*``): then a child without memspan is no surprise."""
    listed = {name.strip() for name in
              env.get(otel_names.OTEL_PYTHON_DISABLED_INSTRUMENTATIONS, "").split(",")}
    return bool(listed & {otel_names.INSTRUMENTOR, "*"})


def _run(args: argparse.Namespace, config: MemspanConfig, env: dict[str, str],
         group: LimitGroup | None, state: RunState) -> int:
    cgroup = CgroupMemorySource(args.cgroup_proc_root, args.cgroup_sys_root)
    before = cgroup.read() if group is None else None
    own_group = not terminal_foreground()
    options: dict[str, Any] = {"process_group": 0} if own_group else {}
    try:
        child = subprocess.Popen(state.command, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE,
                                 preexec_fn=group.join if group is not None else None,
                                 **options)
    except OSError as error:
        print(f"memspan run: cannot start {state.command[0]!r}: {error.strerror}",
              file=sys.stderr)
        return 126 if isinstance(error, PermissionError) else 127
    except subprocess.SubprocessError as error:
        return _fail(f"cannot move the child into its memory-limited cgroup: {error}")
    state.pid = child.pid
    forwarder = SignalForwarder(child.pid, own_group=own_group)
    forwarder.install()
    try:
        tails = (Tail(TAIL_BYTES), Tail(TAIL_BYTES))
        assert child.stdout is not None and child.stderr is not None
        pumps = [start_pump(child.stdout, sys.stdout.buffer, tails[0]),
                 start_pump(child.stderr, sys.stderr.buffer, tails[1])]
        state.exit_code, state.peak_bytes = _wait(child, forwarder)
        forwarder.child_exited = True
        # like `cmd | tee`: until every writer closed the pipe, still forwarding signals
        forwarder.wait_for(lambda: not any(pump.is_alive() for pump in pumps), poll_s=0.1)
        for pump in pumps:
            pump.join()
        state.stdout_tail, state.stderr_tail = tails[0].text(), tails[1].text()
        try:
            _post_mortem(args, config, cgroup, before, group, state)
        except Exception as error:  # never another exit status than the child's
            _warn(f"the post-mortem failed ({type(error).__name__}: {error}); the exit "
                  "status is the child's")
    finally:
        forwarder.restore()
    code = state.exit_code
    return code if code >= 0 else 128 - code


def _wait(child: subprocess.Popen[bytes],
          forwarder: SignalForwarder) -> tuple[int, int | None]:
    """Wait for the child, forwarding signals; its exit code and peak RSS (``ru_maxrss``)."""
    reaped: list[tuple[int, Any]] = []

    def done() -> bool:
        if not reaped:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                reaped.append((status, usage))
        return bool(reaped)

    forwarder.wait_for(done)
    while not reaped:  # no sigtimedwait here: a plain blocking wait, handlers forward
        try:
            _, status, usage = os.wait4(child.pid, 0)
            reaped.append((status, usage))
        except InterruptedError:
            continue
    status, usage = reaped[0]
    code = os.waitstatus_to_exitcode(status)
    child.returncode = code
    peak = int(usage.ru_maxrss) * (1 if sys.platform == "darwin" else 1024)
    return code, peak or None


def _post_mortem(args: argparse.Namespace, config: MemspanConfig, cgroup: CgroupMemorySource,
                 before: CgroupReading | None, group: LimitGroup | None,
                 state: RunState) -> None:
    if group is not None:
        kills_before: int | None = 0
        kills_after = group.oom_kills()
        limit: int | None = group.limit_bytes
    else:
        after = cgroup.read()
        kills_before = before.oom_kills if before is not None else None
        kills_after = after.oom_kills if after is not None else None
        limit = args.compare_limit if args.compare_limit is not None else (
            after.limit_bytes if after is not None else None)
    if kills_before is not None and kills_after is not None:
        state.cgroup_oom_kills = kills_after - kills_before
    rose = bool(state.cgroup_oom_kills and state.cgroup_oom_kills > 0)
    output_tail = state.stdout_tail + "\n" + state.stderr_tail

    def classify() -> ProcessExitClassification:
        return classify_process_exit(state.exit_code, oom_kills_before=kills_before,
                                     oom_kills_after=kills_after, output_tail=output_tail,
                                     peak_bytes=state.peak_bytes, limit_bytes=limit)

    state.classification = classify()
    state.outcome = collect_breadcrumbs(
        state.dump_dir, state.classification, run_started=state.started, child_pid=state.pid,
        cgroup_oom_rose=rose, output_excerpt={"stdout": state.stdout_tail,
                                              "stderr": state.stderr_tail},
        max_dumps=config.max_dumps, max_total_mb=config.max_total_mb)
    crumb_peak = state.outcome.peak_rss_bytes
    if crumb_peak is not None and (state.peak_bytes is None or crumb_peak > state.peak_bytes):
        state.peak_bytes = crumb_peak  # a peak is never shown below an RSS seen in the run
        state.classification = classify()
    for message in state.outcome.refused:
        if message not in state.refused:  # the preflight already warned about this one
            state.refused.append(message)
            _warn(f"refused {message}")
    for message in state.outcome.warnings:
        _warn(message)
    if state.site is not None:
        state.uninstrumented = state.site.uninstrumented()
    try:
        _record_span(config, state)
    except Exception as error:
        _warn(f"the {names.RUN_SPAN} span was not recorded ({type(error).__name__}: {error})")
    print(summary(state), file=sys.stderr)


def span_attributes(state: RunState) -> dict[str, Any]:
    """The ``memspan.run`` span's attributes (documented in docs/telemetry.md)."""
    c = state.classification
    attributes: dict[str, Any] = {
        names.PROCESS_EXECUTABLE_NAME: executable_name(state.command),
        names.PROCESS_PID: state.pid,
        names.PROCESS_EXIT_CODE: state.exit_code,
        names.RUN_SERVICE_NAME: state.service,
        names.RUN_LIMIT_ENFORCED: state.limit_enforced,
        names.RUN_BUNDLES: len(state.outcome.bundles),
        names.RUN_STALE_BREADCRUMBS: len(state.outcome.stale),
        names.RUN_DISCARDED_BREADCRUMBS: state.outcome.discarded,
        names.RUN_REFUSED_PATHS: len(state.refused),
    }
    if state.export_args:
        attributes[names.PROCESS_COMMAND_ARGS] = redact_args(state.command)
    if state.peak_bytes is not None:
        attributes[names.RUN_PEAK_BYTES] = state.peak_bytes
    if c is not None and c.limit_bytes is not None:
        attributes[names.RUN_LIMIT_BYTES] = c.limit_bytes
    if state.cgroup_oom_kills is not None:
        attributes[names.RUN_CGROUP_OOM_KILLS] = state.cgroup_oom_kills
    return attributes


def _record_span(config: MemspanConfig, state: RunState) -> None:
    c = state.classification
    assert c is not None
    providers = install_providers(config, state.service)
    tracer = trace.get_tracer(names.INSTRUMENTATION_NAME, __version__,
                              schema_url=names.SCHEMA_URL)
    span = tracer.start_span(names.RUN_SPAN, start_time=int(state.started * 1e9),
                             attributes=span_attributes(state))
    bundles = state.outcome.bundles
    if c.is_oom:
        event: dict[str, Any] = {names.OOM_KIND: c.kind or OOMKind.KILLED.value,
                                 names.OOM_REASON: c.reason,
                                 names.OOM_CONFIDENCE: c.confidence or "possible"}
        if c.suggestion:
            event[names.OOM_SUGGESTION] = c.suggestion
        if bundles:
            event[names.OOM_DUMP_PATH] = bundles[-1]
            event[names.FILE_PATH] = bundles[-1]
            span.set_attribute(names.OOM_DUMP_PATH, bundles[-1])
        span.add_event(names.OOM_EVENT, event)
    if state.exit_code != 0:
        span.add_event(names.RUN_OUTPUT_EVENT, {
            names.RUN_OUTPUT_STDOUT: _excerpt(state.stdout_tail),
            names.RUN_OUTPUT_STDERR: _excerpt(state.stderr_tail),
        })
        span.set_status(Status(StatusCode.ERROR, c.reason))
    span.end()
    if providers.owned:
        shutdown_providers(providers.owned, EXIT_DEADLINE_S)
    else:
        provider = trace.get_tracer_provider()
        flush = getattr(provider, "force_flush", None)
        if flush is not None:
            flush()


def _excerpt(text: str) -> str:
    """The last ``SPAN_EXCERPT_BYTES`` of ``text`` (UTF-8), starting at a line if one fits."""
    data = text.encode("utf-8", "replace")
    if len(data) <= SPAN_EXCERPT_BYTES:
        return text
    cut = data[-SPAN_EXCERPT_BYTES:].decode("utf-8", "ignore")
    newline = cut.find("\n")
    return cut[newline + 1:] if 0 <= newline < len(cut) - 1 else cut


def _printable(text: str) -> str:
    """``text`` with control characters shown as escapes (never sent raw to a terminal)."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _uninstrumented_text(pythons: list[UninstrumentedPython]) -> str:
    """The summary's sentence on interpreters of the job that ran without memspan."""
    shown = "; ".join(f"{_printable(p.executable)} ({_printable(p.problem)})"
                      for p in pythons[:3])
    if len(pythons) > 3:
        shown += f" and {len(pythons) - 3} more"
    return (f"{shown} cannot run memspan: the job's processes on "
            f"{'that python' if len(pythons) == 1 else 'those pythons'} ran uninstrumented; "
            "install memspan into that environment, or run the job with a python that has it.")


def summary(state: RunState) -> str:
    """The one paragraph printed on stderr after the run."""
    c = state.classification
    shown = _printable(shlex.join(redact_args(state.command)))
    code = state.exit_code
    if code == 0:
        text = f"memspan: {shown} exited normally."
    elif code < 0:
        text = f"memspan: {shown} was killed by {_signal_name(-code)} (exit {code})."
    else:
        text = f"memspan: {shown} exited with status {code}."
    if state.uninstrumented:
        text += f" {_uninstrumented_text(state.uninstrumented)}"
    if c is not None and c.is_oom:
        if c.confidence == "confirmed":
            text += " OOM confirmed: the cgroup's oom_kill counter rose during the run."
        elif c.confidence == "likely":
            text += (" OOM likely: killed by SIGKILL, the usual signal of the OOM killer "
                     "(no cgroup evidence).")
        else:
            text += f" OOM possible ({c.reason}; no cgroup evidence)."
    if state.peak_bytes is not None:
        text += f" Peak RSS {format_mib(state.peak_bytes)}"
        if c is not None and c.limit_bytes:
            kind = "an enforced" if state.limit_enforced else "a"
            text += f" of {kind} {format_mib(c.limit_bytes)} limit."
        else:
            text += "."
    if c is not None and c.suggestion:
        text += f" Suggestion: {c.suggestion}."
    bundles = state.outcome.bundles
    if bundles:
        text += f" Evidence: {bundles[-1]} (from the process's breadcrumbs)."
    if state.outcome.discarded:
        text += (f" {state.outcome.discarded} breadcrumb file(s) of processes that ended "
                 "without evidence of an abnormal death were discarded.")
    if state.outcome.stale:
        text += (f" {len(state.outcome.stale)} stale breadcrumb file(s) from earlier runs in "
                 f"{os.path.join(state.dump_dir, DIRECTORY)} (not this run's evidence; "
                 "delete them when done).")
    return text

