"""``memspan report``: the HTML audit of one session (the latest unless told otherwise).

Exit status: 0 when the page was written from readable input; 1 when a page was written but
the chosen session had no readable phase span while records were skipped (damaged input);
2 with one clear line when nothing usable was found or the output place cannot be used.
Everything printed is stripped of control characters (a phase name cannot drive the
terminal), and a closed pipe (``| head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import datetime, timezone
from typing import Any

from memspan import environment_variables as ev
from memspan.config import ConfigError, MemspanConfig
from memspan.report import InputError, build_report, list_sessions

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def clean(text: object) -> str:
    """``text`` with control characters (escapes, bidi overrides) shown as ``?``."""
    return _CONTROL.sub("?", str(text))


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML memory audit from the embedded output",
        description="Read OTLP JSON lines and OOM bundles; write one HTML report (and a JSON "
                    "sidecar) about one session: the latest unless --session or --all.")
    parser.add_argument("--input", default=None, help="embedded output directory (memspan-out)")
    parser.add_argument("--dumps", default=None, help="OOM dump directory (oom_dumps)")
    parser.add_argument("--out", default=None,
                        help=f"reports directory (default: ${ev.MEMSPAN_REPORTS_DIR}, "
                             f"${ev.RAMFLOW_REPORTS_DIR} or .memory_audits)")
    parser.add_argument("--suffix", default="memory_audit", help="file name suffix")
    parser.add_argument("--env", default=None, help="environment name in the file name")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--session", default=None, metavar="ID",
                        help="report on this session (see --list-sessions)")
    choice.add_argument("--all", action="store_true", dest="merge_all",
                        help="merge every session of the input into one page")
    choice.add_argument("--list-sessions", action="store_true",
                        help="list the sessions in the input and exit")
    parser.set_defaults(handler=report_command)


def _say(line: str, stream: Any = None) -> None:
    print(clean(line), file=stream or sys.stdout)


def report_command(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush
        # from raising again on the closed pipe.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except OSError:
            pass
        return 0


def _run(args: argparse.Namespace) -> int:
    try:
        config = MemspanConfig.from_env()
        input_dir = args.input or config.output_dir
        if args.list_sessions:
            sessions = list_sessions(input_dir)
            if not sessions:
                _say(f"memspan report: no sessions in {input_dir!r}", sys.stderr)
                return 2
            for s in sessions:
                start = "unknown" if not s.first_ns else datetime.fromtimestamp(
                    s.first_ns / 1e9, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
                run = "" if s.run is None else f"  memspan run exit {s.run.exit_code}"
                rank = "" if s.rank is None else f"  rank {s.rank}"
                _say(f"{s.key}  {start}  {s.service or 'unknown service'}{rank}  "
                     f"{s.spans} phase spans{run}")
            return 0
        result = build_report(input_dir, dump_dir=args.dumps or config.dump_dir,
                              out_dir=args.out, suffix=args.suffix, environment=args.env,
                              session=args.session, merge_all=args.merge_all)
    except (ConfigError, InputError) as error:
        _say(f"memspan report: {error}", sys.stderr)
        return 2
    except BrokenPipeError:
        raise
    except OSError as error:
        _say(f"memspan report: {error.filename or ''}: {error.strerror or error}", sys.stderr)
        return 2
    if result.skipped:
        _say(f"memspan report: {result.skipped}", sys.stderr)
    _say(f"memspan report: {result.badge.text} ({result.spans_read} phase spans read, "
         f"session {result.session})")
    _say(f"  {result.badge.sentence}")
    _say(f"  html: {result.html_path}")
    _say(f"  json: {result.json_path}")
    if result.spans_read == 0 and result.skipped:
        _say("memspan report: no phase span could be read from the chosen session, and "
             "records were skipped: the input looks damaged", sys.stderr)
        return 1
    return 0
