"""Render a :class:`ReportModel` as one self-contained HTML page.

Invariants: nothing is fetched (inline CSS and SVG only, a ``data:`` favicon so the browser
does not even ask for one); every string that came from the user's program (phase names,
paths, attribute values, bundle paths) goes through :func:`html.escape`.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from html import escape
from typing import Any

from memspan.analysis.verdicts import Verdict
from memspan.report.model import ReportModel, TimelineSpan

WIDTH = 1100
COLORS = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f")
BADGE_COLORS = {"leak-free": "#2e7d32", "plateau": "#ef6c00", "leaking": "#c62828"}

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted{color:#666;font-size:13px}
.badge{display:inline-block;padding:8px 14px;border-radius:6px;color:#fff;font-weight:700;
letter-spacing:.5px;margin:12px 0}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right}
th:first-child,td:first-child{text-align:left}
td.v-leaking{color:#c62828;font-weight:700}td.v-plateau{color:#ef6c00;font-weight:700}
td.v-leak-free{color:#2e7d32}
svg text{font-size:11px;fill:#333}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:12px;height:3px;vertical-align:middle;margin-right:4px}
"""


def human_bytes(value: float | None) -> str:
    if value is None:
        return "–"
    sign = "-" if value < 0 else ""
    value = abs(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{sign}{value:.1f} {unit}" if unit != "B" else f"{sign}{value:.0f} B"
        value /= 1024
    return f"{sign}{value:.1f} TiB"  # pragma: no cover


def _x(time_ns: int, first: int, last: int) -> float:
    span = max(1, last - first)
    return 60 + (time_ns - first) / span * (WIDTH - 80)


def timeline_svg(model: ReportModel) -> str:
    first, last = model.first_ns or 0, model.last_ns or 1
    spans: Sequence[TimelineSpan] = sorted(model.timeline, key=lambda s: (s.depth, s.start_ns))
    row = 18
    height = row * (model.timeline_depth + 1) + 30
    parts = [f'<svg id="timeline" width="{WIDTH}" height="{height}" role="img" '
             f'aria-label="phase timeline">']
    for depth in range(1, model.timeline_depth + 1):
        parts.append(f'<text x="4" y="{depth * row + 2}">depth {depth}</text>')
    for index, span in enumerate(spans):
        x0 = _x(span.start_ns, first, last)
        x1 = max(x0 + 1.0, _x(span.end_ns, first, last))
        y = span.depth * row - 10
        color = "#c62828" if span.error else COLORS[zlib.crc32(span.name.encode()) % len(COLORS)]
        title = escape(f"{span.path} ({(span.end_ns - span.start_ns) / 1e9:.4f} s)")
        parts.append(f'<rect class="phase" x="{x0:.1f}" y="{y}" width="{x1 - x0:.1f}" '
                     f'height="{row - 4}" fill="{color}" opacity="0.85"><title>{title}</title>'
                     f'</rect>')
        if x1 - x0 > 60 and index < 400:
            parts.append(f'<text x="{x0 + 3:.1f}" y="{y + 11}" fill="#fff">'
                         f'{escape(span.name[:24])}</text>')
    parts.append(_oom_markers(model, height))
    parts.append("</svg>")
    return "".join(parts)


def _oom_markers(model: ReportModel, height: int) -> str:
    first, last = model.first_ns or 0, model.last_ns or 1
    out = []
    for marker in model.ooms:
        x = _x(marker.time_ns, first, last)
        label = escape(f"{marker.kind} in {marker.path}: {marker.reason}")
        line = (f'<line class="oom" x1="{x:.1f}" x2="{x:.1f}" y1="0" y2="{height}" '
                f'stroke="#c62828" stroke-width="2"><title>{label}</title></line>')
        if marker.dump_path:
            href = escape("file://" + marker.dump_path, quote=True)
            line = f'<a href="{href}">{line}</a>'
        out.append(line)
    return "".join(out)


def curves_svg(model: ReportModel) -> str:
    first, last = model.first_ns or 0, model.last_ns or 1
    height = 220
    curves = {name: curve.sorted_points() for name, curve in sorted(model.curves.items())}
    # The cgroup's figures (page cache included) can dwarf the process's: scale to the
    # process/device series when there are any, and clip the rest at the top edge.
    own = [v for name, points in curves.items() if "cgroup" not in name for _, v in points]
    top = max(own or [v for points in curves.values() for _, v in points], default=1.0) or 1.0
    parts = [f'<svg id="memory" width="{WIDTH}" height="{height + 20}" role="img" '
             f'aria-label="memory over time">',
             f'<text x="4" y="12">{escape(human_bytes(top))}</text>',
             f'<text x="4" y="{height}">0</text>']
    legend = []
    for index, (name, points) in enumerate(curves.items()):
        color = COLORS[index % len(COLORS)]
        clipped = any(v > top for _, v in points)
        points = [(t, min(v, top)) for t, v in points]
        coords = " ".join(f"{_x(t, first, last):.1f},{height - v / top * (height - 20):.1f}"
                          for t, v in points)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                     f'points="{coords}"><title>{escape(name)}</title></polyline>')
        if len(points) < 50:  # few points: show each one, a lone point draws no line
            parts.extend(
                f'<circle cx="{_x(t, first, last):.1f}" cy="{height - v / top * (height - 20):.1f}" '
                f'r="2.5" fill="{color}"><title>{escape(name)}: {escape(human_bytes(v))}</title></circle>'
                for t, v in points)
        note = " (above the scale, clipped)" if clipped else ""
        legend.append(f'<span><i style="background:{color}"></i>{escape(name)}{note}</span>')
    parts.append(_oom_markers(model, height))
    parts.append("</svg>")
    return "".join(parts) + f'<div class="legend">{"".join(legend)}</div>'


def render(model: ReportModel, verdicts: dict[str, Verdict], overall: Verdict | None,
           generated_at: str, title: str) -> str:
    badge_verdict = overall.verdict if overall else "leak-free"
    badge_text = overall.badge if overall else "NO REPEATED PHASES"
    rows = []
    for path in sorted(model.paths, key=lambda p: (-(model.paths[p].peak or 0), p)):
        stats = model.paths[path]
        verdict = verdicts[path]
        mean = stats.total_s / stats.runs if stats.runs else 0.0
        rows.append(
            f"<tr><td>{escape(path)}</td><td>{stats.runs}</td><td>{mean:.4f}</td>"
            f"<td>{stats.max_s:.4f}</td><td>{escape(stats.device)}</td>"
            f"<td>{human_bytes(stats.peak)}</td><td>{human_bytes(verdict.retained_total)}</td>"
            f"<td>{human_bytes(verdict.slope_bytes_per_run)}/run</td><td>{verdict.r2:.2f}</td>"
            f'<td class="v-{verdict.verdict}">{verdict.verdict}</td></tr>'
        )
    top = sorted((s for s in model.paths.values() if s.peak is not None),
                 key=lambda s: -(s.peak or 0))[:10]
    top_rows = "".join(f"<tr><td>{escape(s.path)}</td><td>{human_bytes(s.peak)}</td>"
                       f"<td>{escape(s.device)}</td></tr>" for s in top)
    oom_rows = "".join(
        f"<tr><td>{escape(m.path)}</td><td>{escape(m.kind)}</td><td>{escape(m.reason)}</td>"
        f"<td>{_bundle_link(m.dump_path)}</td></tr>" for m in model.ooms
    ) + "".join(
        f"<tr><td>{escape(str(b.get('phase_path') or ''))}</td><td>{escape(str(b.get('kind')))}</td>"
        f"<td>{escape(str(b.get('reason')))}</td><td>{_bundle_link(str(b.get('path')))}</td></tr>"
        for b in model.bundles if not any(m.dump_path == b.get("path") for m in model.ooms)
    )
    color = BADGE_COLORS.get(badge_verdict, "#555")
    subtitle = " · ".join(escape(str(x)) for x in (model.service, model.environment) if x)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{escape(title)}</title><style>{CSS}</style></head>
<body>
<h1>{escape(title)}</h1>
<div class="muted">{subtitle} · generated {escape(generated_at)} · {model.spans_read} phase spans read</div>
<div class="badge" id="badge" style="background:{color}">{escape(badge_text)}</div>
<h2>Timeline</h2>
<div class="muted">Phases by depth (longest {len(model.timeline)} shown); red lines are OOMs (click to open the bundle).</div>
{timeline_svg(model)}
<h2>Memory</h2>
{curves_svg(model)}
<h2>Phase paths</h2>
<table id="paths"><thead><tr><th>path</th><th>runs</th><th>mean s</th><th>max s</th><th>device</th>
<th>peak</th><th>retained</th><th>slope</th><th>R²</th><th>verdict</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
{f'<p class="muted">{model.paths_dropped} runs of further paths were not tabulated.</p>' if model.paths_dropped else ""}
<h2>Top phases by peak</h2>
<table id="top"><thead><tr><th>path</th><th>peak</th><th>device</th></tr></thead><tbody>{top_rows}</tbody></table>
<h2>Out-of-memory events</h2>
<table id="ooms"><thead><tr><th>phase</th><th>kind</th><th>reason</th><th>bundle</th></tr></thead>
<tbody>{oom_rows or '<tr><td colspan="4">none</td></tr>'}</tbody></table>
</body></html>
"""


def _bundle_link(path: str | None) -> str:
    if not path:
        return "–"
    return f'<a href="{escape("file://" + path, quote=True)}">{escape(path)}</a>'


def as_json(model: ReportModel, verdicts: dict[str, Verdict], overall: Verdict | None) -> dict[str, Any]:
    return {
        "service": model.service,
        "environment": model.environment,
        "spans_read": model.spans_read,
        "overall": None if overall is None else {"verdict": overall.verdict, "badge": overall.badge},
        "paths": [
            {"path": s.path, "runs": s.runs, "mean_s": s.total_s / s.runs if s.runs else 0.0,
             "max_s": s.max_s, "device": s.device, "peak_bytes": s.peak,
             "retained_bytes": verdicts[s.path].retained_total,
             "slope_bytes_per_run": verdicts[s.path].slope_bytes_per_run,
             "r2": verdicts[s.path].r2, "verdict": verdicts[s.path].verdict}
            for s in model.paths.values()
        ],
        "ooms": [{"time_unix_nano": m.time_ns, "kind": m.kind, "path": m.path,
                  "dump_path": m.dump_path, "reason": m.reason} for m in model.ooms],
        "bundles": model.bundles,
        "paths_dropped": model.paths_dropped,
    }
