"""``memspan report`` and ``generate_report``: one session's page, named, never overwritten.

A report is about one session (one process's tracker): the latest in the input by default,
``session=`` for another, ``merge_all=True`` for every session at once. Verdicts come from
:func:`~memspan.analysis.verdicts.judge_paths`, the badge from
:func:`~memspan.analysis.verdicts.page_badge`, so the page cannot contradict itself.

File names follow ``YYYYMMDD_HHMMSS_{ENV}_{SUFFIX}.html`` (UTC). ENV comes from the
``environment`` argument, else the ``deployment.environment.name`` resource attribute, else
``APP_ENV``, else ``local``. Both parts are reduced to letters, digits, ``-`` and ``_``, so a
suffix like ``../../etc/x`` cannot leave the reports directory. The directory: ``folder``,
else ``reports_dir``, else ``$MEMSPAN_REPORTS_DIR``, else ``$RAMFLOW_REPORTS_DIR``, else
``.memory_audits`` (created 0700). The page is created exclusively (``_2``, ``_3``... on
collision, never following a symlink); the JSON sidecar is written to a temporary file made
in the same directory and renamed into place, so a planted symlink is replaced, not followed.
"""

from __future__ import annotations

import json
import os
import re
import signal
from dataclasses import dataclass
from datetime import datetime, timezone

from memspan import environment_variables as ev
from memspan.analysis.run_series import RunSeries
from memspan.analysis.thresholds import LeakThresholds
from memspan.analysis.verdicts import (
    Outcome,
    PageBadge,
    Verdict,
    human_bytes,
    judge_paths,
    page_badge,
    verdict_for,
)
from memspan.export.embedded import METRICS_FILE, TRACES_FILE
from memspan.names import REPORT_SUFFIX
from memspan.report.bundles import attach_bundles
from memspan.report.html import PageMeta, as_json, render
from memspan.report.lines import InputError, LineReader, describe_skips
from memspan.report.model import ReportModel
from memspan.report.reader import ALL, Collector, SessionSummary, parts
from memspan.safe_files import replace_file
from memspan.version import __version__

DEFAULT_SUFFIX = REPORT_SUFFIX
DEFAULT_REPORTS_DIR = ".memory_audits"


@dataclass(frozen=True)
class ReportResult:
    """Where the report went and what it says."""

    html_path: str
    json_path: str
    badge: PageBadge
    verdicts: dict[str, Verdict]
    session: str
    spans_read: int
    skipped: str

    @property
    def overall(self) -> PageBadge:
        return self.badge


def sanitize(part: str, fallback: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", part).strip("-_")[:48]
    return cleaned or fallback


def reports_directory(folder: str | None = None, reports_dir: str | None = None) -> str:
    """The reports directory by the documented precedence (see the module docstring)."""
    return (folder or reports_dir or os.environ.get(ev.MEMSPAN_REPORTS_DIR)
            or os.environ.get(ev.RAMFLOW_REPORTS_DIR) or DEFAULT_REPORTS_DIR)


def _create_exclusive(directory: str, stem: str, content: bytes) -> tuple[str, str]:
    """Write ``stem.html`` (or ``stem_N.html``) that did not exist; return html and json paths."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    for attempt in range(1, 10_000):
        name = stem if attempt == 1 else f"{stem}_{attempt}"
        html_path = os.path.join(directory, name + ".html")
        try:
            fd = os.open(html_path, flags, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        return html_path, os.path.join(directory, name + ".json")
    raise InputError(f"no free report name for {stem} in {directory}")


def _prepare_directory(directory: str) -> None:
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except FileExistsError:
        raise InputError(f"reports directory {directory!r} exists and is not a directory") from None
    except OSError as error:
        raise InputError(f"cannot create reports directory {directory!r}: "
                         f"{error.strerror or error}") from None
    if not os.path.isdir(directory):
        raise InputError(f"reports directory {directory!r} is not a directory")


def _collect(input_dir: str, wanted: set[str] | None, merge: bool,
             metrics: bool = True) -> Collector:
    traces = os.path.join(input_dir, TRACES_FILE)
    if not parts(traces):
        raise InputError(f"no {TRACES_FILE} in {input_dir!r}: run a job with the embedded "
                         "default output first (or pass --input)")
    collector = Collector(wanted=wanted, merge=merge, reader=LineReader())
    collector.read_traces(traces)
    metrics_path = os.path.join(input_dir, METRICS_FILE)
    if metrics and parts(metrics_path):
        collector.read_metrics(metrics_path)
    return collector


def list_sessions(input_dir: str) -> list[SessionSummary]:
    """The sessions in the input, oldest first (reads the traces once, builds no model)."""
    collector = _collect(input_dir, wanted=set(), merge=False, metrics=False)
    return sorted(collector.sessions.values(), key=lambda s: (s.first_ns or 0, s.key))


def _latest(collector: Collector) -> SessionSummary | None:
    return max(collector.sessions.values(), key=lambda s: (s.first_ns or 0, s.spans),
               default=None)


def select_model(input_dir: str, session: str | None = None,
                 merge_all: bool = False) -> tuple[ReportModel, Collector]:
    """The model of the requested (or latest) session; InputError naming what is missing."""
    if merge_all:
        collector = _collect(input_dir, None, True)
        model = collector.models.get(ALL)
        if model is None or not collector.sessions:
            raise _nothing(input_dir, collector)
        return model, collector
    collector = _collect(input_dir, {session} if session else None, False)
    if session is not None:
        if session not in collector.sessions:
            known = ", ".join(sorted(collector.sessions)[:5]) or "none"
            raise InputError(f"no session {session!r} in {input_dir!r} (sessions: {known}; "
                             "see --list-sessions)")
        key = session
    else:
        latest = _latest(collector)
        if latest is None:
            raise _nothing(input_dir, collector)
        key = latest.key
    if key not in collector.models:  # evicted to bound memory: read again for this one
        skipped = collector.reader.skipped
        collector = _collect(input_dir, {key}, False)
        collector.reader.skipped = skipped
    return collector.models[key], collector


def _nothing(input_dir: str, collector: Collector) -> InputError:
    skips = describe_skips(collector.reader.skipped)
    return InputError(f"nothing to report in {input_dir!r}: no phase span and no memspan run "
                      f"record could be read" + (f" ({skips})" if skips else ""))


def service_of(model: ReportModel) -> str:
    """The page's service: the child's under ``memspan run``, else the session's own."""
    candidates = [model.run.service if model.run else None, model.service]
    for name in candidates:
        if name and not name.startswith("unknown_service"):
            return name
    command = model.command or (model.run.command if model.run else [])
    for argument in command[1:] + command[:1]:
        base = os.path.basename(argument)
        if base.endswith(".py"):
            return base[:-3]
    if command:
        return os.path.basename(command[0])
    return next((n for n in candidates if n), None) or (
        model.run.launcher_service if model.run and model.run.launcher_service else "unknown service")


def outcome_of(model: ReportModel) -> Outcome | None:
    """How the session's run ended: from ``memspan run``'s span, else from OOM records."""
    run = model.run
    if run is not None:
        signal_name = None
        if run.exit_code is not None and run.exit_code < 0:
            try:
                signal_name = signal.Signals(-run.exit_code).name
            except ValueError:
                signal_name = f"SIGNAL {-run.exit_code}"
        if signal_name:
            what = f"the child was killed by {signal_name} (exit {run.exit_code})"
        elif run.exit_code:
            what = f"the child exited with status {run.exit_code}"
        else:
            what = "the child exited normally"
        oom = run.oom is not None
        if oom:
            what += f"; out-of-memory kill {run.oom_confidence or 'possible'}"
            detail = run.oom.reason if run.oom is not None else ""
            what += f" ({detail})" if detail else ""
        if run.peak_bytes is not None:
            what += f"; peak RSS {human_bytes(run.peak_bytes)}"
            if run.limit_bytes:
                what += f" of a {human_bytes(run.limit_bytes)} limit"
        return Outcome(run.exit_code, signal_name, oom or bool(model.ooms),
                       run.oom_confidence, what)
    if model.ooms:
        count = len(model.ooms)
        return Outcome(None, None, True, "recorded",
                       f"{count} out-of-memory event{'s' if count != 1 else ''} recorded "
                       f"(first: {model.ooms[0].kind} in {model.ooms[0].path or 'unknown phase'})")
    return None


def judge_model(model: ReportModel, limits: LeakThresholds) -> dict[str, Verdict]:
    """Every path's verdict, from the model's attribution (finished here: its runs waiting for
    a successor are attributed with what the input holds); a path with no level figures (no
    memory attributes) is ``insufficient data``."""
    model.attribution.finish()
    judged = judge_paths(model.attribution.series, limits)
    return {path: judged.get(path) or verdict_for(RunSeries(), limits) for path in model.paths}


def build_report(
    input_dir: str = "memspan-out",
    *,
    dump_dir: str = "oom_dumps",
    out_dir: str | None = None,
    suffix: str = DEFAULT_SUFFIX,
    environment: str | None = None,
    now: datetime | None = None,
    thresholds: LeakThresholds | None = None,
    session: str | None = None,
    merge_all: bool = False,
) -> ReportResult:
    """Read ``input_dir`` and ``dump_dir``; write one session's page and sidecar.

    Raises :class:`InputError` (one clear line) for input or an output place that cannot
    be used, :class:`~memspan.config.ConfigError` for bad threshold variables.
    """
    limits = thresholds or LeakThresholds.from_env()
    model, collector = select_model(input_dir, session, merge_all)
    attach_bundles(dump_dir, model, None if merge_all else model.key)
    verdicts = judge_model(model, limits)
    badge = page_badge(list(verdicts.values()), outcome_of(model))
    stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
    env_name = sanitize(environment or model.environment or os.environ.get("APP_ENV", "")
                        or "local", "local")
    directory = reports_directory(out_dir)
    _prepare_directory(directory)
    stem = f"{stamp:%Y%m%d_%H%M%S}_{env_name}_{sanitize(suffix, DEFAULT_SUFFIX)}"
    skipped = describe_skips(collector.reader.skipped)
    service = service_of(model)
    meta = PageMeta(
        title=f"memspan memory audit: {service}", service=service,
        generated_at=stamp.isoformat(timespec="seconds"),
        session="all sessions" if merge_all else model.key,
        sessions_in_input=len(collector.sessions),
        memspan_version=model.memspan_version or f"{__version__} (the report's)",
        skipped=skipped, merged=merge_all)
    page = render(model, verdicts, badge, limits, meta).encode("utf-8")
    html_path, json_path = _create_exclusive(directory, stem, page)
    sidecar = json.dumps(as_json(model, verdicts, badge, limits, meta), indent=2, default=str)
    # exclusive temporary + rename: a symlink planted at the sidecar's name is replaced, never
    # followed (memspan.safe_files)
    replace_file(json_path, sidecar.encode("utf-8"), mode=0o644)
    return ReportResult(os.path.abspath(html_path), os.path.abspath(json_path), badge, verdicts,
                        meta.session, model.spans_read, skipped)


def generate_report(
    folder: str | None = None,
    suffix: str = DEFAULT_SUFFIX,
    *,
    input_dir: str | None = None,
    dump_dir: str | None = None,
    reports_dir: str | None = None,
    session: str | None = None,
    merge_all: bool = False,
    environment: str | None = None,
    thresholds: LeakThresholds | None = None,
    now: datetime | None = None,
) -> ReportResult:
    """The seed's API: ``generate_report(folder="logs/sync", suffix="oracle_export")``.

    Writes ``folder/YYYYMMDD_HHMMSS_{ENV}_{SUFFIX}.html`` (see the module docstring for the
    directory precedence: ``folder``, ``reports_dir``, ``$MEMSPAN_REPORTS_DIR``,
    ``$RAMFLOW_REPORTS_DIR``, ``.memory_audits``). ``input_dir``/``dump_dir`` default to the
    configured output and dump directories. A tracker passes its own ``session`` id (after
    flushing its output) so the page is about the running process.
    """
    if input_dir is None or dump_dir is None:
        from memspan.config import MemspanConfig

        config = MemspanConfig.from_env()
        input_dir = input_dir or config.output_dir
        dump_dir = dump_dir or config.dump_dir
    return build_report(input_dir, dump_dir=dump_dir, out_dir=reports_directory(folder, reports_dir),
                        suffix=suffix, environment=environment, now=now, thresholds=thresholds,
                        session=session, merge_all=merge_all)
