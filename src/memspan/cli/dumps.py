"""``memspan dumps list [DIR]`` and ``memspan dumps show BUNDLE``: read OOM bundles.

Bundles are untrusted input (see :mod:`memspan.oom.bundle_reader`): every file is read
bounded and only if it is a regular file, values that do not fit the schema are skipped
and counted, and everything printed goes through :func:`printable`. Exit status: 0 when
the bundle (or listing) was read whole; 1 when ``show`` printed a damaged bundle (a file
missing, unreadable or corrupt); 2 for a path that is not a bundle directory or a dump
directory that cannot be listed (one line on stderr). A closed pipe (``| head``) ends the
output quietly with status 0.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from memspan import names
from memspan.cli.terminal_text import printable, write_lines
from memspan.config import ConfigError, MemspanConfig
from memspan.names import EventType
from memspan.oom.bundle import CUDA_SNAPSHOT_FILE
from memspan.oom.bundle_reader import (
    MAX_EVENTS_SHOWN,
    Bundle,
    BundleError,
    Schema,
    has_cuda_snapshot,
    missing_files,
    open_bundle,
    read_json,
    tail_events,
)
from memspan.oom.classify import fragmentation_likely, fragmentation_suggestion
from memspan.oom.retention import list_bundles

#: the pickle warning printed next to the command that loads one
PICKLE_WARNING = ("loading a pickle runs code: only run this for a bundle from a source "
                  "you trust")
#: event fields that hold bytes, in the order shown, with their short label
_BYTE_FIELDS = (
    ("rss", "rss"), ("rss_peak", "rss peak"), ("allocated", "alloc"),
    ("allocated_peak", "alloc peak"), ("reserved", "reserved"), ("retained", "retained"),
    ("requested_bytes", "requested"), ("device_free_bytes", "free"),
    ("device_allocated_bytes", "device alloc"),
)
#: sampled metrics worth a column in the events table, with their short label
_SAMPLE_METRICS = (
    (names.PROCESS_MEMORY_USAGE, "rss"), (names.TORCH_ALLOCATED, "alloc"),
    (names.TORCH_RESERVED, "reserved"), (names.CGROUP_MEMORY_USAGE, "cgroup"),
    (names.GPU_MEMORY_USAGE, "gpu used"),
)


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0 or value > MAX_EVENTS_SHOWN:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_EVENTS_SHOWN}, got {value}")
    return value


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser("dumps", help="list and show OOM dump bundles")
    commands = parser.add_subparsers(dest="dumps_command", metavar="COMMAND")
    listing = commands.add_parser("list", help="bundles, newest first")
    listing.add_argument("directory", nargs="?", default=None)
    listing.set_defaults(handler=list_command)
    show = commands.add_parser("show", help="a readable summary of one bundle")
    show.add_argument("bundle")
    show.add_argument("--events", type=_non_negative, default=15,
                      help=f"last events to show (0 to {MAX_EVENTS_SHOWN}, default 15)")
    show.set_defaults(handler=show_command)
    parser.set_defaults(handler=lambda args: (parser.print_help(sys.stderr), 2)[1])


def _fail(message: str) -> int:
    print(f"memspan dumps: {printable(message, 400)}", file=sys.stderr)
    return 2


def mib(value: int | float | None) -> str:
    return "?" if value is None else f"{value / (1 << 20):.1f}"


def human_bytes(value: int | float | None) -> str:
    if value is None:
        return "unknown"
    sign = "-" if value < 0 else ""
    amount = float(abs(value))
    for unit in ("B", "KiB", "MiB", "GiB"):
        if amount < 1024:
            return f"{sign}{amount:.0f} B" if unit == "B" else f"{sign}{amount:.1f} {unit}"
        amount /= 1024
    return f"{sign}{amount:.1f} TiB"


# -- list ----------------------------------------------------------------------------------
def list_command(args: argparse.Namespace) -> int:
    try:
        directory = args.directory or MemspanConfig.from_env().dump_dir
    except ConfigError as error:
        return _fail(str(error))
    if os.path.exists(directory) and not os.path.isdir(directory):
        return _fail(f"{directory} is not a directory")
    try:
        bundles = list(reversed(list_bundles(directory)))
    except OSError as error:
        return _fail(f"cannot list {directory}: {error.strerror or type(error).__name__}")
    if not bundles:
        write_lines([f"no bundles in {printable(os.path.abspath(directory), 400)}"])
        return 0
    header = f"{'time (UTC)':<20} {'rank':>4}  {'kind':<13} {'reason':<32} {'size':>10}  phase path"
    write_lines(_list_rows(header, bundles))
    return 0


def _list_rows(header: str, bundles: Iterable[Any]) -> Iterable[str]:
    """The listing, one bundle a line, then how many manifest values were skipped (if any)."""
    yield header
    skipped = 0
    for entry in bundles:
        stamp = entry.name.split("_", 1)[0]
        when = f"{stamp[0:4]}-{stamp[4:6]}-{stamp[6:8]} {stamp[9:11]}:{stamp[11:13]}:{stamp[13:15]}"
        size = human_bytes(entry.size)
        try:
            bundle = open_bundle(entry.path)
        except BundleError:
            bundle = None
        manifest = bundle.manifest if bundle is not None else None
        if bundle is None or manifest is None:
            problem = bundle.problems.get("manifest.json", "invalid") if bundle else "unreadable"
            yield (f"{when:<20} {'?':>4}  {'CORRUPT':<13} "
                   f"{printable('manifest ' + problem, 32):<32} {size:>10}  {entry.name}")
            continue
        schema = bundle.schema
        rank = schema.count(manifest, "rank")
        kind = printable(schema.text(manifest, "kind"), 13)
        reason = printable(schema.text(manifest, "reason"), 32)
        path = schema.text(manifest, "phase_path")
        rank_text = "?" if rank is None else str(rank)
        skipped += schema.skipped
        yield (f"{when:<20} {rank_text:>4}  {kind:<13} {reason:<32} {size:>10}  "
               f"{printable(path or '-', 200)}")
    if skipped:
        yield f"{skipped} manifest value(s) did not fit the bundle schema and were skipped"


# -- show ----------------------------------------------------------------------------------
def show_command(args: argparse.Namespace) -> int:
    try:
        bundle = open_bundle(os.path.abspath(args.bundle))
    except BundleError as error:
        return _fail(str(error))
    lines = render_bundle(bundle, args.events)
    if not write_lines(lines):
        return 0
    return 1 if bundle.problems else 0


def render_bundle(bundle: Bundle, event_count: int) -> list[str]:
    """Every line ``dumps show`` prints for ``bundle`` (all values neutralised)."""
    schema = bundle.schema
    out = [f"bundle {printable(bundle.path, 400)}"]
    manifest = bundle.manifest
    missing: list[str] = []
    if manifest is None:
        out.append("  CORRUPT OR PARTIAL: manifest.json is "
                   f"{printable(bundle.problems.get('manifest.json'), 80)}")
    else:
        missing = missing_files(bundle)
        if missing:
            out.append(f"  PARTIAL: files listed but missing: {', '.join(missing)}")
            for name in missing:
                bundle.problems.setdefault(name, "missing")
        out.extend(_header(manifest, schema))
    out.extend(_metadata(bundle))
    out.extend(_phases(bundle))
    out.extend(_events(bundle, event_count))
    out.extend(_memory(bundle))
    if has_cuda_snapshot(bundle):
        snapshot = os.path.join(bundle.path, CUDA_SNAPSHOT_FILE)
        html = os.path.join(bundle.path, "memory_trace.html")
        out.append("  CUDA memory snapshot: drag it onto https://pytorch.org/memory_viz, or run")
        out.append(f"    python -m torch.cuda._memory_viz trace_plot "
                   f"{printable(shlex.quote(snapshot), 400)} -o {printable(shlex.quote(html), 400)}")
        out.append(f"    ({PICKLE_WARNING})")
    shown_inline = {"manifest.json", "phases.json", *missing}
    for name, problem in bundle.problems.items():
        if name not in shown_inline:
            out.append(f"  {name}: {printable(problem, 120)}")
    if schema.skipped:
        out.append(f"  {schema.skipped} value(s) did not fit the bundle schema and were skipped")
    return out


def _short(identifier: str | None, keep: int = 8) -> str:
    if not identifier:
        return "unknown"
    return printable(identifier[:keep], keep)


def _header(manifest: Mapping[str, Any], schema: Schema) -> list[str]:
    def text(key: str) -> str:
        return printable(schema.text(manifest, key), 80)

    def count(key: str) -> str:
        value = schema.count(manifest, key)
        return "unknown" if value is None else str(value)

    trace_id = schema.text(manifest, "trace_id")
    span_id = schema.text(manifest, "span_id")
    ids = (f"trace {printable(trace_id, 32)} span {printable(span_id, 16)}" if trace_id
           else "trace unknown")
    return [
        f"  kind {text('kind')}  reason {text('reason')}  backend {text('backend')}  "
        f"rank {count('rank')}  pid {count('pid')}",
        f"  created {text('created_at_utc')}  session {_short(schema.text(manifest, 'session_id'))}"
        f"  {ids}",
        f"  phase path {printable(schema.text(manifest, 'phase_path') or '-', 300)}",
    ]


def _metadata(bundle: Bundle) -> list[str]:
    metadata = read_json(bundle, "metadata.json", dict)
    if metadata is None:
        return []
    schema = bundle.schema
    exception = schema.mapping(metadata, "exception")
    module = schema.text(exception, "module")
    type_name = schema.text(exception, "type")
    qualified = (type_name if module in (None, "builtins") else f"{module}.{type_name}") \
        if type_name else "unknown"
    out = [f"  exception {printable(qualified, 120)}: "
           f"{printable(schema.text(exception, 'message') or '', 300)}"]
    context = schema.text(metadata, "context")
    if context and context != (bundle.manifest or {}).get("phase_path"):
        out.append(f"  context {printable(context, 200)}")
    c = schema.mapping(metadata, "classification")
    observer = schema.mapping(metadata, "observer")
    requested = schema.count(observer, "requested_bytes")
    if requested is None:
        requested = schema.count(c, "requested_bytes")
    free = schema.count(observer, "device_free_bytes")
    if free is None:
        free = schema.count(c, "device_free_bytes")
    total = schema.count(c, "device_total_bytes")
    device = schema.text(c, "device")
    if requested is not None or free is not None:
        out.append(f"  requested {human_bytes(requested)}, free {human_bytes(free)} of "
                   f"{human_bytes(total)} on {printable(device, 20)}")
    allocated = schema.count(c, "allocated_bytes")
    unallocated = schema.count(c, "reserved_unallocated_bytes")
    if allocated is not None or unallocated is not None:
        out.append(f"  PyTorch held {human_bytes(allocated)} allocated and "
                   f"{human_bytes(unallocated)} reserved but unallocated")
    if fragmentation_likely(requested, unallocated):
        out.append(f"  {fragmentation_suggestion(requested or 0, unallocated or 0)}")
    user = schema.mapping(metadata, "user_metadata")
    if user:
        out.append(f"  user metadata {_attributes(user)}")
    return out


def _attributes(values: Mapping[str, Any], limit: int = 16) -> str:
    parts = []
    for key, value in list(values.items())[:limit]:
        parts.append(f"{printable(key, 40)}={printable(_scalar(value), 60)}")
    if len(values) > limit:
        parts.append(f"... ({len(values) - limit} more)")
    return " ".join(parts)


def _scalar(value: Any, depth: int = 0) -> str:
    """A short rendering of an attribute value (lists to two levels, objects elided)."""
    if isinstance(value, list):
        if depth >= 2:
            return "[...]"
        inner = ", ".join(_scalar(v, depth + 1) for v in value[:8])
        return f"[{inner}, ...]" if len(value) > 8 else f"[{inner}]"
    if isinstance(value, dict):
        return "{...}"
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else str(value)


def _phases(bundle: Bundle) -> list[str]:
    phases = read_json(bundle, "phases.json", list)
    if phases is None:
        return [f"  phase stack: {printable(bundle.problems.get('phases.json'), 80)}"]
    if not phases:
        return ["  phase stack: none (the OOM happened outside phases)"]
    out = ["  phase stack (outermost first):"]
    schema = bundle.schema
    for index, phase in enumerate(phases[:64]):
        if not isinstance(phase, dict):
            schema.skip()
            continue
        name = printable(schema.text(phase, "name"), 80)
        attributes = schema.mapping(phase, "attributes")
        suffix = f"  {_attributes(attributes)}" if attributes else ""
        out.append(f"    {'  ' * min(index, 16)}{name}{suffix}")
    return out


def _events(bundle: Bundle, count: int) -> list[str]:
    if count == 0:
        return []
    schema = bundle.schema
    rows: list[tuple[float | None, str, str, str]] = []
    for event in tail_events(bundle, count):
        rows.append((schema.number(event, "ts"), printable(schema.text(event, "type"), 16),
                     printable(schema.text(event, "path") or "", 40), _figures(event, schema)))
    if not rows:
        return [] if "events.jsonl" in bundle.problems else ["  no events recorded"]
    last = next((ts for ts, *_ in reversed(rows) if ts is not None), None)
    out = [f"  last {len(rows)} events before the OOM (seconds before the last event; "
           "figures in MiB):",
           f"    {'offset':>9}  {'type':<16} {'phase path':<40} figures"]
    for ts, kind, path, figures in rows:
        offset = "?" if ts is None or last is None else f"{ts - last:+.3f}"
        out.append(f"    {offset:>9}  {kind:<16} {path:<40} {figures}".rstrip())
    return out


def _figures(event: Mapping[str, Any], schema: Schema) -> str:
    parts = []
    for key, label in _BYTE_FIELDS:
        value = schema.signed(event, key) if key == "retained" else schema.count(event, key)
        if value is not None:
            parts.append(f"{label} {mib(value)}")
    duration = schema.number(event, "duration_s")
    if duration is not None:
        parts.append(f"took {duration * 1000:.1f} ms")
    kind = event.get("type")
    if kind == EventType.SAMPLE.value:
        values = schema.mapping(event, "values")
        for metric, label in _SAMPLE_METRICS:
            for key in list(values)[:64]:
                if key == metric or key.startswith(metric + "["):
                    number = schema.count(values, key)
                    if number is not None:
                        device = key[len(metric):]
                        parts.append(f"{label}{printable(device, 24)} {mib(number)}")
    elif kind in (EventType.ALLOC_RETRY.value, EventType.ALLOCATOR_OOM.value,
                  EventType.CGROUP_OOM_KILL.value):
        before, after = schema.count(event, "before"), schema.count(event, "after")
        if before is not None or after is not None:
            parts.append(f"count {before if before is not None else '?'} -> "
                         f"{after if after is not None else '?'}")
    elif kind == EventType.OOM.value:
        parts.append(f"{printable(schema.text(event, 'kind'), 16)} "
                     f"{printable(schema.text(event, 'reason'), 48)}")
    error = schema.text(event, "error")
    if error:
        parts.append(f"error {printable(error, 40)}")
    return ", ".join(parts)


def _memory(bundle: Bundle) -> list[str]:
    memory = read_json(bundle, "memory.json", dict)
    if memory is None:
        return []
    schema = bundle.schema
    out = []
    torch = schema.mapping(memory, "torch")
    devices = schema.mapping(torch, "devices")
    for device, info in list(devices.items())[:16]:
        if not isinstance(info, dict):
            schema.skip()
            continue
        stats = schema.mapping(info, "memory_stats")
        allocated = schema.mapping(schema.mapping(stats, "allocated_bytes"), "all")
        reserved = schema.mapping(schema.mapping(stats, "reserved_bytes"), "all")
        out.append(f"  allocator {printable(device, 24)}: allocated "
                   f"{human_bytes(schema.count(allocated, 'current'))} (peak "
                   f"{human_bytes(schema.count(allocated, 'peak'))}), reserved "
                   f"{human_bytes(schema.count(reserved, 'current'))}, retries "
                   f"{_or_unknown(schema.count(stats, 'num_alloc_retries'))}, ooms "
                   f"{_or_unknown(schema.count(stats, 'num_ooms'))}")
    host = schema.mapping(memory, "host")
    if host:
        out.append(f"  host: rss {human_bytes(schema.count(host, 'rss_bytes'))}, peak rss "
                   f"{human_bytes(schema.count(host, 'peak_rss_bytes'))}")
    return out


def _or_unknown(value: int | None) -> str:
    return "unknown" if value is None else str(value)
