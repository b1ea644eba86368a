"""``memspan dumps list [DIR]`` and ``memspan dumps show BUNDLE``: read OOM bundles.

A corrupt or partial bundle (missing or unparsable files) is reported as such, never with a
traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any

from memspan.config import ConfigError, MemspanConfig
from memspan.oom.retention import list_bundles
from memspan.report.html import human_bytes


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("dumps", help="list and show OOM dump bundles")
    commands = parser.add_subparsers(dest="dumps_command", metavar="COMMAND")
    listing = commands.add_parser("list", help="bundles, newest first")
    listing.add_argument("directory", nargs="?", default=None)
    listing.set_defaults(handler=list_command)
    show = commands.add_parser("show", help="a readable summary of one bundle")
    show.add_argument("bundle")
    show.add_argument("--events", type=int, default=15, help="last events to show")
    show.set_defaults(handler=show_command)
    parser.set_defaults(handler=lambda args: (parser.print_help(sys.stderr), 2)[1])


def _load(path: str) -> tuple[Any, str | None]:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle), None
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as error:
        return None, f"unreadable ({type(error).__name__})"


def list_command(args: argparse.Namespace) -> int:
    try:
        directory = args.directory or MemspanConfig.from_env().dump_dir
    except ConfigError as error:
        print(f"memspan dumps: {error}", file=sys.stderr)
        return 2
    bundles = list(reversed(list_bundles(directory)))
    if not bundles:
        print(f"no bundles in {os.path.abspath(directory)}")
        return 0
    print(f"{'time (UTC)':<20} {'rank':>4}  {'kind':<13} {'reason':<32} {'size':>10}  phase path")
    for entry in bundles:
        manifest, problem = _load(os.path.join(entry.path, "manifest.json"))
        stamp = entry.name.split("_", 1)[0]
        when = f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"
        if manifest is None or not isinstance(manifest, dict):
            print(f"{when:<20} {'?':>4}  {'CORRUPT':<13} {'manifest ' + (problem or 'invalid'):<32} "
                  f"{human_bytes(entry.size):>10}  {entry.name}")
            continue
        print(f"{when:<20} {manifest.get('rank', '?')!s:>4}  {manifest.get('kind')!s:<13} "
              f"{str(manifest.get('reason'))[:32]:<32} {human_bytes(entry.size):>10}  "
              f"{manifest.get('phase_path') or '-'}")
    return 0


def show_command(args: argparse.Namespace) -> int:
    path = os.path.abspath(args.bundle)
    if not os.path.isdir(path):
        print(f"memspan dumps: {path} is not a bundle directory", file=sys.stderr)
        return 2
    out: list[str] = [f"bundle {path}"]
    manifest, problem = _load(os.path.join(path, "manifest.json"))
    if not isinstance(manifest, dict):
        out.append(f"  CORRUPT OR PARTIAL: manifest.json is {problem or 'not an object'}")
        manifest = {}
    else:
        missing = [f for f in manifest.get("files", []) if not os.path.exists(os.path.join(path, f))]
        if missing:
            out.append(f"  PARTIAL: files listed but missing: {', '.join(missing)}")
        out.append(f"  kind {manifest.get('kind')}  reason {manifest.get('reason')}  "
                   f"backend {manifest.get('backend')}  rank {manifest.get('rank')}  "
                   f"pid {manifest.get('pid')}")
        out.append(f"  created {manifest.get('created_at_utc')}  trace {manifest.get('trace_id')} "
                   f"span {manifest.get('span_id')}")
    metadata, problem = _load(os.path.join(path, "metadata.json"))
    if isinstance(metadata, dict):
        exception = metadata.get("exception") or {}
        out.append(f"  exception {exception.get('module')}.{exception.get('type')}: "
                   f"{str(exception.get('message', ''))[:300]}")
        c = metadata.get("classification") or {}
        observer = metadata.get("observer") or {}
        requested = observer.get("requested_bytes", c.get("requested_bytes"))
        free = observer.get("device_free_bytes", c.get("device_free_bytes"))
        if requested is not None or free is not None:
            out.append(f"  requested {human_bytes(requested)} vs free {human_bytes(free)} "
                       f"on {c.get('device') or '?'} (total {human_bytes(c.get('device_total_bytes'))})")
    elif problem:
        out.append(f"  metadata.json is {problem}")
    phases, problem = _load(os.path.join(path, "phases.json"))
    out.append("  phase stack:" if isinstance(phases, list) and phases else
               f"  phase stack: {'none' if phases == [] else problem}")
    for index, phase in enumerate(phases if isinstance(phases, list) else []):
        out.append(f"    {'  ' * index}{phase.get('name') if isinstance(phase, dict) else phase}")
    out.extend(_last_events(os.path.join(path, "events.jsonl"), args.events))
    memory, problem = _load(os.path.join(path, "memory.json"))
    if isinstance(memory, dict):
        torch = memory.get("torch") or {}
        for device, info in (torch.get("devices") or {}).items():
            stats = info.get("memory_stats") or {}
            allocated = (stats.get("allocated_bytes") or {}).get("all", {})
            reserved = (stats.get("reserved_bytes") or {}).get("all", {})
            out.append(f"  allocator {device}: allocated {human_bytes(allocated.get('current'))} "
                       f"(peak {human_bytes(allocated.get('peak'))}), reserved "
                       f"{human_bytes(reserved.get('current'))}, retries "
                       f"{stats.get('num_alloc_retries')}, ooms {stats.get('num_ooms')}")
        host = memory.get("host") or {}
        if host:
            out.append(f"  host: rss {human_bytes(host.get('rss_bytes'))}, peak rss "
                       f"{human_bytes(host.get('peak_rss_bytes'))}")
    snapshot = os.path.join(path, "cuda_snapshot.pickle")
    if os.path.exists(snapshot):
        out.append("  CUDA memory snapshot: drag it onto https://pytorch.org/memory_viz, or run")
        out.append(f"    python -m torch.cuda._memory_viz trace_plot {shlex.quote(snapshot)} "
                   f"-o {shlex.quote(os.path.join(path, 'memory_trace.html'))}")
    print("\n".join(out))
    return 0


def _last_events(path: str, count: int) -> list[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            lines = handle.readlines()[-count:]
    except OSError:
        return ["  events.jsonl is missing"]
    out = [f"  last {len(lines)} events before the OOM:"]
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            out.append("    (unreadable line)")
            continue
        details = {k: v for k, v in event.items() if k not in ("seq", "ts", "type")}
        out.append(f"    {event.get('type', '?'):<16} {json.dumps(details, default=str)[:150]}")
    return out
