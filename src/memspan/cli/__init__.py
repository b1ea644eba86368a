"""The ``memspan`` command line: one sub-command per module in this package."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from memspan.cli import dumps, report, run
from memspan.version import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memspan", description="ML memory telemetry on OpenTelemetry."
    )
    parser.add_argument("--version", action="version", version=f"memspan {__version__}")
    subparsers = parser.add_subparsers(dest="command_name", metavar="COMMAND")
    run.add_parser(subparsers)
    report.add_parser(subparsers)
    dumps.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    result: int = handler(args)
    return result
