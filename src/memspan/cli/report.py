"""``memspan report [--input DIR] [--out DIR] [--suffix S]``: the HTML audit report."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from memspan.config import ConfigError, MemspanConfig
from memspan.report import build_report


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "report", help="write a self-contained HTML memory audit from the embedded output",
        description="Read OTLP JSON lines and OOM bundles; write one HTML report and a JSON "
                    "sidecar with leak/plateau verdicts per phase path.")
    parser.add_argument("--input", default=None, help="embedded output directory (memspan-out)")
    parser.add_argument("--dumps", default=None, help="OOM dump directory (oom_dumps)")
    parser.add_argument("--out", default=None,
                        help="reports directory (default: $MEMSPAN_REPORTS_DIR or .memory_audits)")
    parser.add_argument("--suffix", default="memory_audit", help="file name suffix")
    parser.add_argument("--env", default=None, help="environment name in the file name")
    parser.set_defaults(handler=report_command)


def report_command(args: argparse.Namespace) -> int:
    try:
        config = MemspanConfig.from_env()
        result = build_report(args.input or config.output_dir,
                              dump_dir=args.dumps or config.dump_dir,
                              out_dir=args.out, suffix=args.suffix, environment=args.env)
    except (ConfigError, FileNotFoundError) as error:
        print(f"memspan report: {error}", file=sys.stderr)
        return 2
    verdict = result.overall.badge if result.overall else "no phase path ran 5 times"
    print(f"memspan report: {verdict}")
    print(f"  html: {result.html_path}")
    print(f"  json: {result.json_path}")
    return 0
