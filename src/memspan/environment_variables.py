"""Every environment variable memspan reads, with what it means (contrib style).

Each value is validated by :mod:`memspan.config`; a bad value is an error that names the
variable and the accepted values.
"""

MEMSPAN_SAMPLE_INTERVAL = "MEMSPAN_SAMPLE_INTERVAL"
"""Seconds between two samples of the allocator, host and cgroup memory. Default ``0.1``."""

MEMSPAN_NVML_INTERVAL = "MEMSPAN_NVML_INTERVAL"
"""Seconds between two NVML samples (NVML calls are slow). Default ``1.0``."""

MEMSPAN_EXPORT_INTERVAL = "MEMSPAN_EXPORT_INTERVAL"
"""Seconds between two metric exports of the embedded default output. Default ``5.0``."""

MEMSPAN_OUTPUT_DIR = "MEMSPAN_OUTPUT_DIR"
"""Directory of the embedded default output (``traces.jsonl``, ``metrics.jsonl``).
Default ``memspan-out``."""

MEMSPAN_OUTPUT_MAX_MB = "MEMSPAN_OUTPUT_MAX_MB"
"""Size in MiB at which an embedded output file is rotated to ``<name>.1`` (the older ``.1``
is dropped and counted). Default ``64``."""

MEMSPAN_OOM_ENABLED = "MEMSPAN_OOM_ENABLED"
"""Whether the OOM flight recorder writes dump bundles. Default ``true``."""

MEMSPAN_DUMP_DIR = "MEMSPAN_DUMP_DIR"
"""Directory of OOM dump bundles. Default ``oom_dumps``."""

MEMSPAN_BUFFER_SIZE = "MEMSPAN_BUFFER_SIZE"
"""Events kept in the flight recorder's ring buffer. Default ``10000``."""

MEMSPAN_MAX_DUMPS = "MEMSPAN_MAX_DUMPS"
"""Bundles kept in the dump directory; older ones are pruned. Default ``5``."""

MEMSPAN_MAX_TOTAL_MB = "MEMSPAN_MAX_TOTAL_MB"
"""Total MiB of bundles kept in the dump directory. Default ``256``."""

MEMSPAN_CUDA_HISTORY = "MEMSPAN_CUDA_HISTORY"
"""Record the CUDA allocator's memory history so an OOM bundle holds
``cuda_snapshot.pickle``. Costs allocator time; default ``false``."""

MEMSPAN_BREADCRUMBS = "MEMSPAN_BREADCRUMBS"
"""Append the ring buffer to a breadcrumb file periodically, so a SIGKILLed process leaves
evidence. Default ``false`` (``true`` under ``memspan run``)."""

MEMSPAN_AUTO_PHASES = "MEMSPAN_AUTO_PHASES"
"""Under auto-instrumentation, open phases around torch forward/backward/optimizer steps
and DataLoader iteration. Default ``true``."""

MEMSPAN_RSS_METRIC = "MEMSPAN_RSS_METRIC"
"""Emit ``process.memory.usage``; turn off when the system-metrics instrumentation already
does. Default ``true``."""

MEMSPAN_REPORTS_DIR = "MEMSPAN_REPORTS_DIR"
"""Directory of HTML audit reports. Default ``.memory_audits``."""

MEMSPAN_JOB_ID = "MEMSPAN_JOB_ID"
"""Job id for the ``memspan.job.id`` resource attribute (else TORCHELASTIC_RUN_ID or
SLURM_JOB_ID)."""

RAMFLOW_REPORTS_DIR = "RAMFLOW_REPORTS_DIR"
"""Alias of ``MEMSPAN_REPORTS_DIR`` for users coming from RAM-FLOW; used only when
``MEMSPAN_REPORTS_DIR`` is unset."""
