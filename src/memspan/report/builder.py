"""``memspan report``: read the embedded output and the dump directory, write the report.

File names follow ``YYYYMMDD_HHMMSS_{ENV}_{SUFFIX}.html`` (UTC) in ``$MEMSPAN_REPORTS_DIR``
or ``.memory_audits/``. ENV comes from the ``deployment.environment.name`` resource
attribute, else ``APP_ENV``, else ``local``. Both parts are reduced to letters, digits, ``-``
and ``_``, so a suffix like ``../../etc/x`` cannot leave the reports directory. A report is
never overwritten: the file is created exclusively, with ``_2``, ``_3``... on collision. A
JSON sidecar with the same numbers sits next to it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone

from memspan.analysis.thresholds import LeakThresholds
from memspan.analysis.verdicts import Verdict, overall, verdict_for
from memspan.export.embedded import METRICS_FILE, TRACES_FILE
from memspan.oom.retention import list_bundles
from memspan.report.html import as_json, render
from memspan.report.model import ReportModel
from memspan.report.reader import read_metrics, read_traces
from memspan.safe_files import replace_file

DEFAULT_SUFFIX = "memory_audit"


@dataclass(frozen=True)
class ReportResult:
    html_path: str
    json_path: str
    overall: Verdict | None
    verdicts: dict[str, Verdict]


def sanitize(part: str, fallback: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", part).strip("-_")[:48]
    return cleaned or fallback


def _create_exclusive(directory: str, stem: str) -> tuple[str, str]:
    """Create ``stem.html`` (or ``stem_N.html``) that did not exist; return html and json paths."""
    for attempt in range(1, 10_000):
        name = stem if attempt == 1 else f"{stem}_{attempt}"
        html_path = os.path.join(directory, name + ".html")
        try:
            fd = os.open(html_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        os.close(fd)
        return html_path, os.path.join(directory, name + ".json")
    raise FileExistsError(f"no free report name for {stem} in {directory}")


def read_bundles(dump_dir: str, model: ReportModel) -> None:
    for entry in list_bundles(dump_dir)[-model.max_ooms:]:
        record: dict[str, object] = {"name": entry.name, "path": entry.path, "size": entry.size}
        try:
            with open(os.path.join(entry.path, "manifest.json"), encoding="utf-8") as handle:
                manifest = json.load(handle)
            for key in ("kind", "reason", "phase_path", "rank", "created_at_utc"):
                record[key] = manifest.get(key)
        except (OSError, ValueError):
            record["error"] = "unreadable manifest"
        model.bundles.append(record)


def build_report(
    input_dir: str = "memspan-out",
    *,
    dump_dir: str = "oom_dumps",
    out_dir: str | None = None,
    suffix: str = DEFAULT_SUFFIX,
    environment: str | None = None,
    now: datetime | None = None,
    thresholds: LeakThresholds | None = None,
) -> ReportResult:
    traces = os.path.join(input_dir, TRACES_FILE)
    if not os.path.exists(traces) and not os.path.exists(traces + ".1"):
        raise FileNotFoundError(f"no {TRACES_FILE} in {input_dir!r}: run a job with the embedded "
                                "default output first (or pass --input)")
    model = ReportModel()
    read_traces(traces, model)
    read_metrics(os.path.join(input_dir, METRICS_FILE), model)
    read_bundles(dump_dir, model)
    limits = thresholds or LeakThresholds.from_env()
    verdicts = {path: verdict_for(stats.series, limits) for path, stats in model.paths.items()}
    worst = overall([v for v in verdicts.values() if v.runs >= limits.min_runs])
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    env_name = sanitize(environment or model.environment or os.environ.get("APP_ENV", "") or "local",
                        "local")
    directory = out_dir or os.environ.get("MEMSPAN_REPORTS_DIR") or ".memory_audits"
    os.makedirs(directory, exist_ok=True)
    stem = f"{stamp:%Y%m%d_%H%M%S}_{env_name}_{sanitize(suffix, DEFAULT_SUFFIX)}"
    html_path, json_path = _create_exclusive(directory, stem)
    title = f"memspan memory audit: {model.service or 'unknown service'}"
    with open(html_path, "w", encoding="utf-8") as handle:
        handle.write(render(model, verdicts, worst, stamp.isoformat(), title))
    # Exclusive temporary + rename: a symlink planted at the sidecar's name is replaced,
    # never followed (memspan.safe_files).
    replace_file(json_path, json.dumps(as_json(model, verdicts, worst), indent=2,
                                       default=str).encode("utf-8"), mode=0o644)
    return ReportResult(os.path.abspath(html_path), os.path.abspath(json_path), worst, verdicts)
