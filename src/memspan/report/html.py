"""Render one session's :class:`ReportModel` as one self-contained HTML page.

Invariants: nothing is fetched and nothing runs (inline CSS and SVG only, no script, a
``data:`` favicon so the browser does not even ask for one); every string that came from the
input (phase names, paths, attribute values, commands, bundle paths) goes through
:func:`html.escape`; links to bundles are absolute ``file://`` URLs, so they open from
wherever the page is.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

from memspan.analysis.thresholds import LeakThresholds
from memspan.analysis.verdicts import PageBadge, Verdict, human_bytes
from memspan.report.charts import memory_svg, steps_svg, timeline_svg
from memspan.report.model import OOMRecord, ReportModel

__all__ = ["PageMeta", "as_json", "human_bytes", "render"]

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1340px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
.muted{color:#666;font-size:13px}
.badge{display:inline-block;padding:10px 16px;border-radius:6px;color:#fff;font-weight:700;
letter-spacing:.5px;margin:12px 0 4px;font-size:18px}
.sentence{font-size:14px;margin:4px 0 12px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{border-bottom:1px solid #ddd;padding:4px 8px;text-align:right;vertical-align:top;
white-space:nowrap}
th:first-child,td:first-child{text-align:left}
td.text,th.text{text-align:left}
td.v-leaking{color:#c62828;font-weight:700}td.v-plateau{color:#ef6c00;font-weight:700}
td.v-leak-free{color:#2e7d32}td.v-insufficient{color:#616161}
td.evidence{white-space:normal;text-align:left;font-size:12px;color:#444;max-width:520px}
dl.meta{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:13px;margin:0}
dl.meta dt{color:#666}dl.meta dd{margin:0;font-family:ui-monospace,monospace;word-break:break-all}
svg text{font-size:11px;fill:#333}
.legend span{display:inline-block;margin-right:14px;font-size:12px}
.legend i{display:inline-block;width:12px;height:3px;vertical-align:middle;margin-right:4px}
"""


@dataclass(frozen=True)
class PageMeta:
    """What the page says about where it came from."""

    title: str
    service: str
    generated_at: str
    session: str
    sessions_in_input: int
    memspan_version: str
    skipped: str
    merged: bool = False


def _verdict_class(verdict: Verdict) -> str:
    if verdict.critical:
        return "v-leaking"  # the critical alert is red, like the badge
    return "v-insufficient" if verdict.verdict == "insufficient data" else f"v-{verdict.verdict}"


def _time(ns: int | None) -> str:
    if not ns:
        return "unknown"
    from datetime import datetime, timezone

    try:
        moment = datetime.fromtimestamp(ns / 1e9, timezone.utc)
    except (OverflowError, ValueError, OSError):
        return f"{ns} ns since the epoch"
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def file_url(path: str) -> str:
    """An absolute ``file://`` URL for a local path (percent-encoded)."""
    return Path(os.path.abspath(path)).as_uri()


def _bundle_link(path: str | None) -> str:
    if not path:
        return "–"
    return f'<a href="{escape(file_url(path), quote=True)}">{escape(path)}</a>'


def _metadata(model: ReportModel, meta: PageMeta, thresholds: LeakThresholds) -> str:
    run = model.run
    command = model.command or (run.command if run is not None else [])
    rows: list[tuple[str, str]] = [
        ("service", meta.service),
        ("environment", model.environment or "unknown"),
        ("host", model.host or (run.host if run else None) or "unknown"),
        ("rank", "not set (a single-process job)" if model.rank is None else str(model.rank)),
        ("session", meta.session + (f" (one of {meta.sessions_in_input} in the input)"
                                    if meta.sessions_in_input > 1 else "")),
        ("start", _time(model.first_ns)),
        ("end", _time(model.last_ns)),
        ("duration", f"{((model.last_ns or 0) - (model.first_ns or 0)) / 1e9:.3f} s"),
        ("command", " ".join(command) if command else "unknown"),
        ("memspan version", meta.memspan_version),
    ]
    if run is not None:
        rows.append(("exit", _exit_text(run.exit_code)))
        if run.peak_bytes is not None:
            rows.append(("peak RSS of the child", human_bytes(run.peak_bytes)))
        if run.limit_bytes is not None:
            rows.append(("memory limit", human_bytes(run.limit_bytes)))
    read = f"{model.spans_read}" + (f"; {meta.skipped}" if meta.skipped else "")
    if model.phases_from_breadcrumbs:
        read += (f"; {model.phases_from_breadcrumbs} phase runs replayed from the OOM bundle's "
                 "breadcrumbs (the process died before exporting its spans)")
    rows.append(("phase spans read", read))
    return '<dl class="meta" id="meta">' + "".join(
        f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>" for k, v in rows) + "</dl>"


def _exit_text(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name} ({code})"
        except ValueError:
            return f"killed by signal {-code} ({code})"
    return f"exit status {code}"


def _path_rows(model: ReportModel, verdicts: dict[str, Verdict]) -> str:
    rows = []
    for path in sorted(model.paths, key=lambda p: (-verdicts[p].severity, -(model.paths[p].added or 0), p)):
        stats = model.paths[path]
        verdict = verdicts[path]
        rows.append(
            f'<tr><td class="text">{escape(path)}</td><td>{stats.runs}</td>'
            f"<td>{stats.total_s:.3f} s</td><td>{stats.max_s:.3f} s</td>"
            f"<td>{escape(stats.device)}</td><td>{escape(human_bytes(stats.peak))}</td>"
            f"<td>{escape(human_bytes(stats.added))}</td>"
            f"<td>{escape(human_bytes(verdict.held_bytes))}</td>"
            f"<td>{escape(human_bytes(verdict.slope_bytes_per_run))}/run</td>"
            f"<td>{verdict.r2:.2f}</td>"
            f'<td class="text {_verdict_class(verdict)}">{escape(verdict.badge.lower())}</td>'
            f'<td class="evidence">{escape(verdict.evidence)}</td></tr>')
    return "".join(rows)


def _top_rows(model: ReportModel) -> str:
    ranked = sorted((s for s in model.paths.values() if s.added is not None),
                    key=lambda s: (-(s.added or 0), s.path))[:10]
    return "".join(
        f'<tr><td class="text">{escape(s.path)}</td><td>{escape(human_bytes(s.added))}</td>'
        f"<td>{escape(human_bytes(s.peak))}</td><td>{escape(s.device)}</td></tr>"
        for s in ranked)


def _oom_rows(ooms: Sequence[OOMRecord]) -> str:
    return "".join(
        f'<tr><td class="text">{escape(_time(o.time_ns))}</td>'
        f'<td class="text">{escape(o.path or "unknown")}</td>'
        f'<td class="text">{escape(o.kind)}</td><td class="text">{escape(o.reason)}</td>'
        f'<td class="text">{_bundle_link(o.dump_path)}</td></tr>' for o in ooms)


def _threshold_rows(thresholds: LeakThresholds) -> str:
    return "".join(f'<tr><td class="text">{escape(name)}</td><td>{escape(value)}</td>'
                   f'<td class="text">{escape(rule)}</td></tr>'
                   for name, value, rule in thresholds.describe())


def render(model: ReportModel, verdicts: dict[str, Verdict], badge: PageBadge,
           thresholds: LeakThresholds, meta: PageMeta) -> str:
    ooms = sorted(model.ooms, key=lambda o: o.time_ns)
    dropped = (f'<p class="muted">{model.paths_dropped} runs of further paths were not '
               f"tabulated.</p>") if model.paths_dropped else ""
    merged = ('<p class="muted">This page merges every session in the input (--all): runs of '
              'different processes are counted together.</p>') if meta.merged else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{escape(meta.title)}</title><style>{CSS}</style></head>
<body>
<h1 id="title">{escape(meta.title)}</h1>
<div class="muted">generated {escape(meta.generated_at)}</div>
<div class="badge" id="badge" data-verdict="{escape(badge.key, quote=True)}" style="background:{badge.color}">{escape(badge.text)}</div>
<p class="sentence" id="badge-sentence">{escape(badge.sentence)}</p>
{merged}
<h2>Run</h2>
{_metadata(model, meta, thresholds)}
<h2>Memory over time</h2>
{memory_svg(model)}
<h2>Memory by phase</h2>
{steps_svg(model)}
<h2>Timeline</h2>
<div class="muted">Phases by depth (the longest {len(model.timeline)} shown); red lines are OOMs.</div>
{timeline_svg(model)}
<h2>Phase paths</h2>
<table id="paths"><thead><tr><th>path</th><th>runs</th><th>total</th><th>longest</th>
<th>device</th><th>peak</th><th>added</th><th>held</th><th>growth</th><th>R²</th>
<th class="text">verdict</th><th class="text">evidence</th></tr></thead>
<tbody>{_path_rows(model, verdicts) or '<tr><td colspan="12">no phase spans</td></tr>'}</tbody></table>
{dropped}
<h2>Top phases by peak</h2>
<div class="muted">What the phase itself added at its peak (its peak minus its start), the most over its runs.</div>
<table id="top"><thead><tr><th>path</th><th>added at peak</th><th>peak</th><th>device</th></tr></thead>
<tbody>{_top_rows(model)}</tbody></table>
<h2>Out-of-memory events</h2>
<table id="ooms"><thead><tr><th>time</th><th class="text">phase</th><th class="text">kind</th>
<th class="text">reason</th><th class="text">bundle</th></tr></thead>
<tbody>{_oom_rows(ooms) or '<tr><td colspan="5">none</td></tr>'}</tbody></table>
{f'<p class="muted">{model.ooms_dropped} further OOMs not listed.</p>' if model.ooms_dropped else ""}
<h2>Thresholds used</h2>
<table id="thresholds"><thead><tr><th>threshold</th><th>value</th><th class="text">rule</th></tr></thead>
<tbody>{_threshold_rows(thresholds)}</tbody></table>
</body></html>
"""


def as_json(model: ReportModel, verdicts: dict[str, Verdict], badge: PageBadge,
            thresholds: LeakThresholds, meta: PageMeta) -> dict[str, Any]:
    return {
        "service": meta.service,
        "environment": model.environment,
        "session": meta.session,
        "spans_read": model.spans_read,
        "skipped": meta.skipped,
        "badge": {"key": badge.key, "text": badge.text, "sentence": badge.sentence},
        "overall": {"verdict": badge.key, "badge": badge.text},
        "paths": [
            {"path": s.path, "runs": s.runs, "total_s": s.total_s, "max_s": s.max_s,
             "device": s.device, "peak_bytes": s.peak, "added_bytes": s.added,
             "held_bytes": verdicts[s.path].held_bytes,
             "slope_bytes_per_run": verdicts[s.path].slope_bytes_per_run,
             "growth_bytes": verdicts[s.path].growth_bytes,
             "r2": verdicts[s.path].r2, "verdict": verdicts[s.path].verdict,
             "critical": verdicts[s.path].critical, "evidence": verdicts[s.path].evidence}
            for s in model.paths.values()
        ],
        "ooms": [{"time_unix_nano": o.time_ns, "kind": o.kind, "path": o.path,
                  "dump_path": o.dump_path, "reason": o.reason, "source": o.source}
                 for o in model.ooms],
        "thresholds": {name: value for name, value, _ in thresholds.describe()},
        "paths_dropped": model.paths_dropped,
    }
