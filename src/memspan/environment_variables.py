"""Every environment variable memspan reads: one declaration each (contrib style).

A declaration gives the variable's name, type, valid range, default and meaning. Everything
else is derived from these declarations and nothing else spells a variable's name:

- parsing and validation (:meth:`Variable.parse`, used by :mod:`memspan.config`, the resource
  detector and :func:`leak_threshold_values`);
- the table in ``docs/configuration.md`` (:func:`markdown_table`; a test keeps them equal);
- the environment allowlist of OOM bundles (:func:`bundle_allowlist`).

The standard ``OTEL_*`` variables declared here take their names from :mod:`memspan.otel_names`
(which has them from the OpenTelemetry SDK); the ``OTEL_*`` variables memspan only sets for
a child, or reads without validating, are named there alone.

Invariant: a bad value is a :class:`ConfigError` whose message names the variable, repeats the
value and states the accepted range. Parsing never raises anything else, whatever the text
(a property-based test feeds it arbitrary strings).
"""

from __future__ import annotations

import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from memspan import names, otel_names

#: a host name, an IPv4 address or an IPv6 address (without its brackets)
_HOST = re.compile(r"[A-Za-z0-9._%:-]+")

Kind = Literal["seconds", "mib", "int", "bytes", "ratio", "bool", "path", "text", "url", "choice"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_MAX_TEXT = 4096


class ConfigError(ValueError):
    """A configuration value was not acceptable; the message names it and the valid range.

    Public as ``memspan.ConfigError`` (and ``memspan.config.ConfigError``), which is how
    tracebacks name it.
    """

    __module__ = "memspan"


@dataclass(frozen=True)
class Variable:
    """One environment variable: what it is, what it accepts, what it defaults to."""

    name: str
    kind: Kind
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    #: the :class:`~memspan.config.MemspanConfig` field it sets, if any
    setting: str | None = None
    #: copied into an OOM bundle's ``environment.json`` when set
    in_bundle: bool = True
    #: a standard variable of the OpenTelemetry SDK or of a launcher, validated by memspan
    external: bool = False
    #: accepted words, for ``choice`` variables
    choices: tuple[str, ...] = ()

    # -- parsing ----------------------------------------------------------------------------
    def parse(self, raw: str, label: str | None = None) -> Any:
        """The value of ``raw`` (stripped), or :class:`ConfigError` naming ``label``."""
        label = label or self.name
        if not isinstance(raw, str):
            raise ConfigError(f"{label}={raw!r} is not text; {self.accepted()}")
        text = raw.strip()
        if self.kind == "bool":
            lowered = text.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ConfigError(f"{label}={raw!r} is not a boolean; {self.accepted()}")
        if self.kind in ("seconds", "mib", "ratio", "bytes"):
            try:
                number = float(text)
            except ValueError:
                raise ConfigError(f"{label}={raw!r} is not a number; {self.accepted()}") from None
            return self.check(number, label)
        if self.kind == "int":
            try:
                integer = int(text) if len(text) <= 30 else None
            except ValueError:
                integer = None
            if integer is None:
                raise ConfigError(f"{label}={raw!r} is not an integer; {self.accepted()}")
            return self.check(integer, label)
        return self.check(text, label)

    def check(self, value: Any, label: str | None = None) -> Any:
        """``value`` validated (and normalised: paths become absolute) or ConfigError."""
        label = label or self.name
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{label}={value!r} is not a boolean; accepted: True or False")
            return value
        if self.kind in ("seconds", "mib", "ratio", "bytes", "int"):
            return self._check_number(value, label)
        if self.kind == "path":
            return self._check_path(value, label)
        if value is None and self.default is None:
            return None
        if not isinstance(value, str) or len(value) > _MAX_TEXT or "\x00" in value:
            raise ConfigError(f"{label}={_short(value)} is not usable; {self.accepted()}")
        if self.kind == "url":
            return self._check_url(value, label)
        if self.kind == "choice" and value.strip() not in self.choices:
            raise ConfigError(f"{label}={value!r} is not one of the accepted values; "
                              f"{self.accepted()}")
        return value

    def _check_number(self, value: Any, label: str) -> Any:
        integral = self.kind == "int"
        ok_type = isinstance(value, int) if integral else isinstance(value, (int, float))
        if not ok_type or isinstance(value, bool):
            noun = "an integer" if integral else "a number"
            raise ConfigError(f"{label}={value!r} is not {noun}; {self.accepted()}")
        if not integral and not math.isfinite(value):
            raise ConfigError(f"{label}={value!r} is not a finite number; {self.accepted()}")
        low, high = self.minimum, self.maximum
        if (low is not None and value < low) or (high is not None and value > high):
            raise ConfigError(f"{label}={_short(value)} is out of range; {self.accepted()}")
        return value if integral else float(value)

    def _check_path(self, value: Any, label: str) -> str:
        if not isinstance(value, (str, os.PathLike)):
            raise ConfigError(f"{label}={_short(value)} is not usable; {self.accepted()}")
        text = os.fspath(value)
        if not isinstance(text, str) or not text.strip() or "\x00" in text \
                or len(text) > _MAX_TEXT:
            raise ConfigError(f"{label}={_short(value)} is not usable; {self.accepted()}")
        try:
            resolved = os.path.abspath(os.path.expanduser(text.strip()))
            is_other = os.path.exists(resolved) and not os.path.isdir(resolved)
        except (OSError, ValueError):
            raise ConfigError(f"{label}={_short(value)} is not usable; {self.accepted()}") from None
        if is_other:
            raise ConfigError(f"{label}={text!r} exists and is not a directory; {self.accepted()}")
        return resolved

    def _check_url(self, value: str, label: str) -> str:
        text = value.strip()
        bare = "://" not in text  # host:port, which the gRPC exporter accepts
        try:
            parts = urllib.parse.urlsplit("//" + text if bare else text)
            _ = parts.port  # raises ValueError for a port out of range or not a number
        except ValueError as error:
            raise ConfigError(f"{label}={value!r} is not a URL ({error}); "
                              f"{self.accepted()}") from None
        scheme_ok = bare or parts.scheme in ("http", "https")
        host = parts.hostname or ""
        if text and not _HOST.fullmatch(host):  # 'not a url' splits into a host with spaces
            raise ConfigError(f"{label}={value!r} is not a URL (no valid host name); "
                              f"{self.accepted()}")
        if text and (not scheme_ok or not parts.hostname):
            raise ConfigError(f"{label}={value!r} is not an http(s) URL; {self.accepted()}")
        return value

    # -- documentation ----------------------------------------------------------------------
    def accepted(self) -> str:
        """The valid range, in the words of every error message and of the docs table."""
        return "accepted: " + self.range_text()

    def range_text(self) -> str:
        low, high = _g(self.minimum), _g(self.maximum)
        if self.kind == "seconds":
            return f"a number of seconds in [{low}, {high}]"
        if self.kind == "mib":
            return f"a number of MiB in [{low}, {high}]"
        if self.kind == "bytes":
            return f"a number of bytes in [{low}, {high}]"
        if self.kind == "ratio":
            return f"a number in [{low}, {high}]"
        if self.kind == "int":
            return f"an integer in [{low}, {high}]"
        if self.kind == "bool":
            return "true/false, 1/0, yes/no, on/off"
        if self.kind == "path":
            return "a directory path, not an existing file"
        if self.kind == "url":
            return "an http:// or https:// URL (or host:port for gRPC)"
        if self.kind == "choice":
            return "one of " + ", ".join(f"`{c}`" for c in self.choices)
        return f"text of at most {_MAX_TEXT} characters"

    def default_text(self) -> str:
        if self.default is None:
            return "unset"
        if isinstance(self.default, bool):
            return "true" if self.default else "false"
        return _g(self.default) if isinstance(self.default, (int, float)) else str(self.default)


def _g(number: float | None) -> str:
    if number is None:
        return "-"
    if isinstance(number, int) or float(number).is_integer():
        return str(int(number))
    return f"{number:g}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


REGISTRY: dict[str, Variable] = {}


def _declare(name: str, kind: Kind, default: Any, doc: str, **details: Any) -> str:
    if name in REGISTRY:
        raise RuntimeError(f"{name} is declared twice")
    REGISTRY[name] = Variable(name, kind, default, doc, **details)
    return name


_HOUR: Final = 3600.0
_DAY: Final = 86400.0
_TIB_IN_MIB: Final = 1 << 20
_PIB: Final = float(1 << 50)
_INT32: Final = (1 << 31) - 1

# -- MemspanConfig settings -------------------------------------------------------------------
MEMSPAN_SAMPLE_INTERVAL: Final = _declare(
    "MEMSPAN_SAMPLE_INTERVAL", "seconds", 0.1,
    "seconds between two samples of allocator, host and cgroup memory",
    minimum=0.001, maximum=_HOUR, setting="sample_interval_s")
MEMSPAN_NVML_INTERVAL: Final = _declare(
    "MEMSPAN_NVML_INTERVAL", "seconds", 1.0,
    "seconds between two NVML samples (NVML calls are slow)",
    minimum=0.01, maximum=_HOUR, setting="nvml_interval_s")
MEMSPAN_EXPORT_INTERVAL: Final = _declare(
    "MEMSPAN_EXPORT_INTERVAL", "seconds", 5.0,
    "seconds between two metric exports of the embedded default output",
    minimum=0.1, maximum=_DAY, setting="export_interval_s")
MEMSPAN_OUTPUT_DIR: Final = _declare(
    "MEMSPAN_OUTPUT_DIR", "path", "memspan-out",
    "directory of the embedded default output (`traces.jsonl`, `metrics.jsonl`), created 0700 "
    "with files 0600", setting="output_dir")
MEMSPAN_OUTPUT_MAX_MB: Final = _declare(
    "MEMSPAN_OUTPUT_MAX_MB", "mib", 64.0,
    "size at which an embedded output file is rotated to `<name>.1` (the older `.1` is "
    "dropped and counted)", minimum=0.01, maximum=float(_TIB_IN_MIB), setting="output_max_mb")
MEMSPAN_OOM_ENABLED: Final = _declare(
    "MEMSPAN_OOM_ENABLED", "bool", True, "write OOM dump bundles", setting="oom_enabled")
MEMSPAN_DUMP_DIR: Final = _declare(
    "MEMSPAN_DUMP_DIR", "path", "oom_dumps", "directory of OOM dump bundles",
    setting="dump_dir")
MEMSPAN_BUFFER_SIZE: Final = _declare(
    "MEMSPAN_BUFFER_SIZE", "int", 10_000, "events kept in the flight recorder's ring buffer",
    minimum=1, maximum=10_000_000, setting="buffer_size")
MEMSPAN_MAX_DUMPS: Final = _declare(
    "MEMSPAN_MAX_DUMPS", "int", 5, "bundles kept in the dump directory (older ones are pruned)",
    minimum=1, maximum=1_000_000, setting="max_dumps")
MEMSPAN_MAX_TOTAL_MB: Final = _declare(
    "MEMSPAN_MAX_TOTAL_MB", "int", 256,
    "MiB of bundles kept in the dump directory (the newest bundle is always kept)",
    minimum=1, maximum=16 * _TIB_IN_MIB, setting="max_total_mb")
MEMSPAN_CUDA_HISTORY: Final = _declare(
    "MEMSPAN_CUDA_HISTORY", "bool", False,
    "record the CUDA allocator's memory history so a bundle holds `cuda_snapshot.pickle` "
    "(costs allocator time)", setting="cuda_history")
MEMSPAN_BREADCRUMBS: Final = _declare(
    "MEMSPAN_BREADCRUMBS", "bool", False,
    "append the ring buffer to `<dump_dir>/.breadcrumbs/` so a SIGKILL leaves evidence "
    "(`true` under `memspan run`)", setting="breadcrumbs")
MEMSPAN_AUTO_PHASES: Final = _declare(
    "MEMSPAN_AUTO_PHASES", "bool", True,
    "under auto-instrumentation, phases around torch forward/backward/optimizer steps and "
    "DataLoader iteration", setting="auto_phases")
MEMSPAN_RSS_METRIC: Final = _declare(
    "MEMSPAN_RSS_METRIC", "bool", True,
    f"emit `{names.PROCESS_MEMORY_USAGE}` (turn off when the system-metrics instrumentation does)",
    setting="rss_metric")
MEMSPAN_REPORTS_DIR: Final = _declare(
    "MEMSPAN_REPORTS_DIR", "path", ".memory_audits", "directory of HTML audit reports",
    setting="reports_dir")
MEMSPAN_JOB_ID: Final = _declare(
    "MEMSPAN_JOB_ID", "text", None,
    f"the `{names.JOB_ID}` resource attribute (else `TORCHELASTIC_RUN_ID` or `SLURM_JOB_ID`)",
    setting="job_id")
MEMSPAN_QUIET: Final = _declare(
    "MEMSPAN_QUIET", "bool", False,
    "`true` suppresses the one start-up line on stderr that says where telemetry goes",
    setting="quiet")
MEMSPAN_SPAN_MODE: Final = _declare(
    "MEMSPAN_SPAN_MODE", "choice", "deferred",
    "how phase spans reach the provider: `deferred` (built off the caller's thread in batches, "
    "only where every span processor just queues spans; otherwise `sync` is taken), `sync` "
    "(built and handed to `on_end` at the phase's exit, on the caller's thread) or `sdk` "
    "(ordinary SDK spans; chosen anyway when the provider is not the SDK's or a processor "
    "works in `on_start`)",
    choices=("deferred", "sync", "sdk"), setting="span_mode")
MEMSPAN_TRACE_ROOTS: Final = _declare(
    "MEMSPAN_TRACE_ROOTS", "text", "step",
    "comma-separated phase names that start a trace of their own (one trace per step), "
    "linked to the enclosing phase; empty: none", setting="trace_roots")
MEMSPAN_STEP_KEEP_EVERY: Final = _declare(
    "MEMSPAN_STEP_KEEP_EVERY", "int", 1,
    "step sampling: export one step trace in N of those with nothing worth seeing (steps "
    "with an error, an OOM, a new peak, memory growth or other instrumentations' spans are "
    "always exported); 1 exports every step", minimum=1, maximum=1_000_000_000,
    setting="step_keep_every")
MEMSPAN_STEP_KEEP_FIRST: Final = _declare(
    "MEMSPAN_STEP_KEEP_FIRST", "int", 10, "step sampling: the first N steps are always exported",
    minimum=0, maximum=1_000_000_000, setting="step_keep_first")
MEMSPAN_STEP_KEEP_RETAINED_MB: Final = _declare(
    "MEMSPAN_STEP_KEEP_RETAINED_MB", "mib", 64.0,
    "step sampling: a step whose root phase retained more than this is always exported",
    minimum=0.0, maximum=float(_TIB_IN_MIB), setting="step_keep_retained_mb")
MEMSPAN_STEP_PEAK_INCREASE_MB: Final = _declare(
    "MEMSPAN_STEP_PEAK_INCREASE_MB", "mib", 1.0,
    "step sampling: a step is always exported when one of its phase paths beats its previous "
    "peak by more than this", minimum=0.0, maximum=float(_TIB_IN_MIB),
    setting="step_peak_increase_mb")

RAMFLOW_REPORTS_DIR: Final = _declare(
    "RAMFLOW_REPORTS_DIR", "path", None,
    "alias of `MEMSPAN_REPORTS_DIR` for users coming from RAM-FLOW; read only when "
    "`MEMSPAN_REPORTS_DIR` is unset", external=True)

# -- leak and plateau verdicts (memspan.analysis) ---------------------------------------------
MEMSPAN_LEAK_MIN_RUNS: Final = _declare(
    "MEMSPAN_LEAK_MIN_RUNS", "int", 5, "runs of a phase path needed before a leak verdict",
    minimum=3, maximum=1_000_000)
MEMSPAN_LEAK_SLOPE_BYTES: Final = _declare(
    "MEMSPAN_LEAK_SLOPE_BYTES", "bytes", float(16 << 10),
    "the least growth per run that can be a leak (a floor against page-sized noise; the leak "
    "itself is judged on the growth over all runs, see docs/reports.md)",
    minimum=1.0, maximum=_PIB)
MEMSPAN_LEAK_MIN_R2: Final = _declare(
    "MEMSPAN_LEAK_MIN_R2", "ratio", 0.8,
    "how well a straight line must fit the growth for a leak verdict", minimum=0.0, maximum=1.0)
MEMSPAN_PLATEAU_BYTES: Final = _declare(
    "MEMSPAN_PLATEAU_BYTES", "int", 64 << 20,
    "memory held after the last run above which a path is on a plateau",
    minimum=1, maximum=1 << 50)

#: the LeakThresholds field each leak variable sets
LEAK_THRESHOLD_FIELDS: Final = {
    MEMSPAN_LEAK_MIN_RUNS: "min_runs",
    MEMSPAN_LEAK_SLOPE_BYTES: "slope_bytes_per_run",
    MEMSPAN_LEAK_MIN_R2: "min_r2",
    MEMSPAN_PLATEAU_BYTES: "plateau_bytes",
}

# -- standard OpenTelemetry variables memspan reads or validates (names: memspan.otel_names) --
OTEL_EXPORTER_OTLP_ENDPOINT: Final = _declare(
    otel_names.OTEL_EXPORTER_OTLP_ENDPOINT, "url", None,
    "OTLP endpoint of every signal; setting it makes `configure()` build OTLP exporters",
    external=True, in_bundle=False)
OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: Final = _declare(
    otel_names.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, "url", None, "OTLP endpoint of spans",
    external=True, in_bundle=False)
OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: Final = _declare(
    otel_names.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, "url", None, "OTLP endpoint of metrics",
    external=True, in_bundle=False)
OTEL_EXPORTER_OTLP_TIMEOUT: Final = _declare(
    otel_names.OTEL_EXPORTER_OTLP_TIMEOUT, "seconds", 10.0,
    "seconds an OTLP export may take (the Python SDK reads seconds)",
    minimum=0.001, maximum=_HOUR, external=True)
OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: Final = _declare(
    otel_names.OTEL_EXPORTER_OTLP_TRACES_TIMEOUT, "seconds", None,
    f"as `{OTEL_EXPORTER_OTLP_TIMEOUT}`, for spans", minimum=0.001, maximum=_HOUR, external=True)
OTEL_EXPORTER_OTLP_METRICS_TIMEOUT: Final = _declare(
    otel_names.OTEL_EXPORTER_OTLP_METRICS_TIMEOUT, "seconds", None,
    f"as `{OTEL_EXPORTER_OTLP_TIMEOUT}`, for metrics", minimum=0.001, maximum=_HOUR, external=True)
OTEL_METRIC_EXPORT_INTERVAL: Final = _declare(
    otel_names.OTEL_METRIC_EXPORT_INTERVAL, "int", None,
    "milliseconds between two exports of the SDK's periodic metric reader (the SDK refuses "
    "0 and negative values)", minimum=1, maximum=_HOUR * 24_000, external=True)
OTEL_METRIC_EXPORT_TIMEOUT: Final = _declare(
    otel_names.OTEL_METRIC_EXPORT_TIMEOUT, "int", None,
    "milliseconds one export of the periodic metric reader may take",
    minimum=1, maximum=_HOUR * 1000, external=True)
_PROTOCOLS = ("grpc", "http/protobuf", "http/json")
OTEL_EXPORTER_OTLP_PROTOCOL: Final = _declare(
    otel_names.OTEL_EXPORTER_OTLP_PROTOCOL, "choice", None, "OTLP transport of every signal",
    external=True, choices=_PROTOCOLS)
OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: Final = _declare(
    otel_names.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, "choice", None, "OTLP transport of spans",
    external=True, choices=_PROTOCOLS)
OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: Final = _declare(
    otel_names.OTEL_EXPORTER_OTLP_METRICS_PROTOCOL, "choice", None, "OTLP transport of metrics",
    external=True, choices=_PROTOCOLS)
OTEL_TRACES_EXPORTER: Final = _declare(
    otel_names.OTEL_TRACES_EXPORTER, "text", None,
    f"span exporters by entry-point name (`otlp`, `console`, `none`, `{otel_names.FILE_EXPORTER}`...)",
    external=True)
OTEL_METRICS_EXPORTER: Final = _declare(
    otel_names.OTEL_METRICS_EXPORTER, "text", None,
    "metric exporters by entry-point name (`otlp`, `console`, `prometheus`, `none`...)",
    external=True)
OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: Final = _declare(
    otel_names.OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT, "int", 16384,
    "longest string attribute value kept (longer ones are cut); memspan applies this default "
    "to the providers it builds, where the SDK's default is unlimited",
    minimum=1, maximum=_INT32, external=True)
OTEL_SERVICE_NAME: Final = _declare(
    otel_names.OTEL_SERVICE_NAME, "text", None, f"the `{names.SERVICE_NAME}` resource attribute",
    external=True)

# -- launcher variables the resource detector reads -------------------------------------------
RANK: Final = _declare("RANK", "int", None, "rank (torchrun)", minimum=0, maximum=_INT32,
                       external=True)
LOCAL_RANK: Final = _declare("LOCAL_RANK", "int", None, "local rank (torchrun)", minimum=0,
                             maximum=_INT32, external=True)
WORLD_SIZE: Final = _declare("WORLD_SIZE", "int", None, "ranks in the job (torchrun)",
                             minimum=1, maximum=_INT32, external=True)
OMPI_COMM_WORLD_RANK: Final = _declare(
    "OMPI_COMM_WORLD_RANK", "int", None, "rank (Open MPI)", minimum=0, maximum=_INT32,
    external=True)
OMPI_COMM_WORLD_LOCAL_RANK: Final = _declare(
    "OMPI_COMM_WORLD_LOCAL_RANK", "int", None, "local rank (Open MPI)", minimum=0,
    maximum=_INT32, external=True)
OMPI_COMM_WORLD_SIZE: Final = _declare(
    "OMPI_COMM_WORLD_SIZE", "int", None, "ranks in the job (Open MPI)", minimum=1,
    maximum=_INT32, external=True)
SLURM_PROCID: Final = _declare("SLURM_PROCID", "int", None, "rank (Slurm)", minimum=0,
                               maximum=_INT32, external=True)
SLURM_LOCALID: Final = _declare("SLURM_LOCALID", "int", None, "local rank (Slurm)", minimum=0,
                                maximum=_INT32, external=True)
SLURM_NTASKS: Final = _declare("SLURM_NTASKS", "int", None, "ranks in the job (Slurm)",
                               minimum=1, maximum=_INT32, external=True)
TORCHELASTIC_RUN_ID: Final = _declare(
    "TORCHELASTIC_RUN_ID", "text", None, f"job id (torchrun), the `{names.JOB_ID}` fallback",
    external=True)
SLURM_JOB_ID: Final = _declare(
    "SLURM_JOB_ID", "text", None, f"job id (Slurm), the second `{names.JOB_ID}` fallback",
    external=True)

#: (rank, local rank, world size) variables by launcher, first match wins
RANK_VARIABLES: Final = (
    (RANK, LOCAL_RANK, WORLD_SIZE),
    (OMPI_COMM_WORLD_RANK, OMPI_COMM_WORLD_LOCAL_RANK, OMPI_COMM_WORLD_SIZE),
    (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS),
)

#: variables whose presence means the user chose exporters (so no embedded default)
EXPORTER_CHOICE_VARIABLES: Final = (
    OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
    OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, OTEL_TRACES_EXPORTER, OTEL_METRICS_EXPORTER,
)

#: variables of other software that a bundle's ``environment.json`` keeps as context
_BUNDLE_CONTEXT: Final = (
    "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "CUDA_LAUNCH_BLOCKING",
    "PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF", "PYTORCH_NO_CUDA_MEMORY_CACHING",
    "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "OMP_NUM_THREADS",
    "LOCAL_WORLD_SIZE", "GROUP_RANK",
)


# -- derived views ----------------------------------------------------------------------------
def variable(name: str) -> Variable:
    return REGISTRY[name]


def read(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The parsed value of ``name`` from ``environ`` (default ``os.environ``); None when unset
    or blank. Raises :class:`ConfigError` for a bad value."""
    env = os.environ if environ is None else environ
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return REGISTRY[name].parse(raw)


def settings() -> dict[str, Variable]:
    """MemspanConfig field name -> its variable."""
    return {v.setting: v for v in REGISTRY.values() if v.setting is not None}


def leak_threshold_values(environ: Mapping[str, str] | None = None) -> dict[str, int | float]:
    """The ``MEMSPAN_LEAK_*``/``MEMSPAN_PLATEAU_BYTES`` values that are set, keyed by the
    :class:`~memspan.analysis.thresholds.LeakThresholds` field they set, validated against
    the declared ranges (``LeakThresholds.from_env`` can be ``cls(**leak_threshold_values())``).
    """
    values: dict[str, int | float] = {}
    for name, field in LEAK_THRESHOLD_FIELDS.items():
        value = read(name, environ)
        if value is not None:
            values[field] = value
    return values


def bundle_allowlist() -> tuple[str, ...]:
    """Variable names an OOM bundle's ``environment.json`` may hold (no URLs: they can carry
    credentials)."""
    declared = tuple(name for name, v in REGISTRY.items() if v.in_bundle)
    return _BUNDLE_CONTEXT + declared


def markdown_table(external: bool = False) -> str:
    """The table of ``docs/configuration.md`` (memspan's own variables, or the standard ones)."""
    rows = ["| variable | keyword | default | valid values | meaning |",
            "|---|---|---|---|---|"]
    for v in REGISTRY.values():
        if v.external != external:
            continue
        keyword = f"`{v.setting}`" if v.setting else ""
        rows.append(f"| `{v.name}` | {keyword} | `{v.default_text()}` | {v.range_text()} "
                    f"| {v.doc} |")
    return "\n".join(rows) + "\n"
