"""Inline SVG charts: the phase timeline, memory over time, and memory by phase index.

Invariants: axes carry ticks (seconds on time axes, MiB/GiB on memory axes, phase numbers on
the step axis); the cgroup limit, when known, is inside the memory scale (a horizontal dashed
line), never clipped; every label that came from the user's program is escaped.
"""

from __future__ import annotations

import math
import zlib
from html import escape

from memspan import names
from memspan.analysis.verdicts import human_bytes
from memspan.report.model import OOMRecord, ReportModel

WIDTH = 1300
LEFT = 78
RIGHT = 20
COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f")
LIMIT_COLOR = "#c62828"
KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


def nice_step(span: float, ticks: int = 5) -> float:
    """A 1/2/2.5/5 x 10^k step giving about ``ticks`` ticks over ``span`` (> 0)."""
    raw = max(span, 1e-12) / ticks
    power: float = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * power:
            return float(factor * power)
    return float(10 * power)  # pragma: no cover


def byte_ticks(top: float) -> tuple[float, list[tuple[float, str]]]:
    """(scale top, [(value in bytes, label)]) with labels in KiB, MiB or GiB."""
    unit, name = (GIB, "GiB") if top >= 2 * GIB else (MIB, "MiB") if top >= 2 * MIB else (KIB, "KiB")
    step = nice_step(top / unit)
    count = math.ceil(top / unit / step - 1e-9) or 1
    ticks = [(i * step * unit, f"{i * step:g} {name}") for i in range(count + 1)]
    return ticks[-1][0], ticks


def _x(value: float, first: float, last: float) -> float:
    return LEFT + (value - first) / max(1e-9, last - first) * (WIDTH - LEFT - RIGHT)


def _time_axis(first_ns: int, last_ns: int, y: float) -> str:
    seconds = max(1e-6, (last_ns - first_ns) / 1e9)
    step = nice_step(seconds, 8)
    parts = [f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y}" y2="{y}" stroke="#999"/>']
    tick = 0.0
    while tick <= seconds + 1e-9:
        x = _x(tick, 0, seconds)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y}" y2="{y + 4}" stroke="#999"/>'
                     f'<text class="tick" x="{x:.1f}" y="{y + 16}" text-anchor="middle">'
                     f'{tick:g} s</text>')
        tick += step
    return "".join(parts)


def _y_axis(ticks: list[tuple[float, str]], top: float, y0: float, height: float) -> str:
    parts = []
    for value, label in ticks:
        y = y0 + height - value / top * height
        parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#eee"/><text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{escape(label)}</text>')
    return "".join(parts)


def timeline_svg(model: ReportModel) -> str:
    first, last = model.first_ns or 0, max((model.last_ns or 1), (model.first_ns or 0) + 1)
    spans = sorted(model.timeline, key=lambda s: (s.depth, s.start_ns))
    row = 20
    depth = max((s.depth for s in spans), default=1)
    height = row * depth + 10
    parts = [f'<svg id="timeline" width="{WIDTH}" height="{height + 24}" role="img" '
             f'aria-label="phase timeline">']
    for level in range(1, depth + 1):
        parts.append(f'<text class="tick" x="4" y="{level * row - 4}">depth {level}</text>')
    for index, span in enumerate(spans):
        x0 = _x(span.start_ns, first, last)
        x1 = max(x0 + 1.0, _x(span.end_ns, first, last))
        y = span.depth * row - 16
        color = "#c62828" if span.error else COLORS[zlib.crc32(span.name.encode()) % len(COLORS)]
        title = escape(f"{span.path} ({(span.end_ns - span.start_ns) / 1e9:.4f} s)")
        parts.append(f'<rect class="phase" x="{x0:.1f}" y="{y}" width="{x1 - x0:.1f}" '
                     f'height="{row - 4}" fill="{color}" opacity="0.85"><title>{title}</title>'
                     f'</rect>')
        if x1 - x0 > 60 and index < 400:
            parts.append(f'<text x="{x0 + 3:.1f}" y="{y + 12}" fill="#fff">'
                         f'{escape(span.name[:24])}</text>')
    parts.append(_time_axis(first, last, height))
    parts.append(_oom_lines(model.ooms, first, last, 0, height))
    parts.append("</svg>")
    return "".join(parts)


def _oom_lines(ooms: list[OOMRecord], first: int, last: int, y0: float, y1: float) -> str:
    out = []
    for oom in ooms:
        if not first <= oom.time_ns <= last:
            continue
        x = _x(oom.time_ns, first, last)
        label = escape(f"{oom.kind} in {oom.path or 'unknown phase'}: {oom.reason}")
        out.append(f'<line class="oom" x1="{x:.1f}" x2="{x:.1f}" y1="{y0}" y2="{y1}" '
                   f'stroke="#c62828" stroke-width="2"><title>{label}</title></line>')
    return "".join(out)


def memory_svg(model: ReportModel) -> str:
    """Memory over time, to scale with the cgroup limit when there is one."""
    curves = {name: curve.sorted_points() for name, curve in sorted(model.curves.items())}
    curves = {name: points for name, points in curves.items() if points}
    if not curves:
        return '<p class="muted" id="memory-empty">No memory figures in the input.</p>'
    first, last = model.first_ns or 0, max(model.last_ns or 1, (model.first_ns or 0) + 1)
    limit_names = [n for n in curves if n.startswith(names.CGROUP_MEMORY_LIMIT)]
    limits = [v for n in limit_names for _, v in curves[n]]
    limit = min(limits) if limits else None
    if model.run is not None and model.run.limit_bytes:
        limit = min(limit or model.run.limit_bytes, model.run.limit_bytes)
    # The container's usage (page cache included) can dwarf the process: it sets the scale
    # only next to a limit (then it is below the limit); else it is clipped, and says so.
    container = [n for n in curves if n.startswith(names.CGROUP_MEMORY_USAGE)]
    values = [v for n, points in curves.items() if n not in limit_names
              and (limit or n not in container) for _, v in points]
    if not values:
        values = [v for points in curves.values() for _, v in points]
    top, ticks = byte_ticks(max(values + ([limit] if limit else []) + [1.0]) * 1.05)
    height, y0 = 260.0, 10.0
    parts = [f'<svg id="memory" width="{WIDTH}" height="{y0 + height + 30:.0f}" role="img" '
             f'aria-label="memory over time">', _y_axis(ticks, top, y0, height)]
    legend = []
    index = 0
    for name, points in curves.items():
        if name in limit_names:
            continue
        color = COLORS[index % len(COLORS)]
        index += 1
        highest = max(v for _, v in points)
        points = [(t, min(v, top)) for t, v in points]
        coords = " ".join(f"{_x(t, first, last):.1f},{y0 + height - v / top * height:.1f}"
                          for t, v in points)
        parts.append(f'<polyline class="curve" fill="none" stroke="{color}" stroke-width="1.5" '
                     f'points="{coords}"><title>{escape(name)}</title></polyline>')
        if len(points) < 60:  # few points: show each one, a lone point draws no line
            parts.extend(
                f'<circle cx="{_x(t, first, last):.1f}" cy="{y0 + height - v / top * height:.1f}" '
                f'r="2.5" fill="{color}"><title>{escape(name)}: {escape(human_bytes(v))}'
                f'</title></circle>' for t, v in points)
        note = f" (up to {human_bytes(highest)}: above the scale)" if highest > top else ""
        legend.append(f'<span><i style="background:{color}"></i>{escape(name)}{escape(note)}'
                      '</span>')
    if limit:
        y = y0 + height - limit / top * height
        parts.append(f'<line id="limit" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" '
                     f'y2="{y:.1f}" stroke="{LIMIT_COLOR}" stroke-width="2" '
                     f'stroke-dasharray="6 4"/><text class="tick" x="{WIDTH - RIGHT - 4}" '
                     f'y="{y - 4:.1f}" text-anchor="end" fill="{LIMIT_COLOR}">memory limit '
                     f'{escape(human_bytes(limit))}</text>')
        legend.append(f'<span><i style="background:{LIMIT_COLOR}"></i>memory limit '
                      f'{escape(human_bytes(limit))}</span>')
    parts.append(_time_axis(first, last, y0 + height))
    parts.append(_oom_lines(model.ooms, first, last, y0, y0 + height))
    parts.append("</svg>")
    return "".join(parts) + f'<div class="legend">{"".join(legend)}</div>'


def steps_svg(model: ReportModel) -> str:
    """The memory figure at the end of each phase, by phase index (order of phase start)."""
    points = model.steps.sorted_points()
    if model.steps_first is not None:
        points.insert(0, model.steps_first)
    if len(points) < 2:
        return '<p class="muted" id="steps-empty">Fewer than two phases with memory figures.</p>'
    values = [v for _, v in points]
    low = min(values)
    top, ticks = byte_ticks(max(values) * 1.05)
    height, y0 = 200.0, 10.0
    count = len(points)
    parts = [f'<svg id="steps" width="{WIDTH}" height="{y0 + height + 30:.0f}" role="img" '
             f'aria-label="memory by phase index">', _y_axis(ticks, top, y0, height)]
    coords = " ".join(f"{_x(i, 0, count - 1):.1f},{y0 + height - v / top * height:.1f}"
                      for i, (_, v) in enumerate(points))
    parts.append(f'<polyline class="curve" fill="none" stroke="{COLORS[0]}" stroke-width="1.5" '
                 f'points="{coords}"/>')
    axis_y = y0 + height
    parts.append(f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{axis_y}" y2="{axis_y}" '
                 f'stroke="#999"/>')
    step = max(1, int(nice_step(count - 1, 10)))
    for i in range(0, count, step):
        x = _x(i, 0, count - 1)
        offset = 0 if model.steps_first is not None else 1
        label = "start" if i + offset == 0 else f"#{i + offset}"
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{axis_y}" y2="{axis_y + 4}" '
                     f'stroke="#999"/><text class="tick" x="{x:.1f}" y="{axis_y + 16}" '
                     f'text-anchor="middle">{label}</text>')
    parts.append("</svg>")
    note = (f'<div class="muted">The figure at the end of each phase (#n), in order of start, '
            f'after the figure at the start of the first; lowest '
            f'{escape(human_bytes(low))}, highest {escape(human_bytes(max(values)))}.</div>')
    return "".join(parts) + note
