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

MEMSPAN_SPAN_MODE = "MEMSPAN_SPAN_MODE"
"""How phase spans reach the provider: ``deferred`` (built off the caller's thread in
batches, the default), ``sync`` (built at the phase's exit on the caller's thread) or ``sdk``
(ordinary SDK spans; chosen automatically when the provider is not the SDK's or a span
processor does work in ``on_start``)."""

MEMSPAN_TRACE_ROOTS = "MEMSPAN_TRACE_ROOTS"
"""Comma-separated phase names that start a new trace (one trace per step), linked to the
enclosing phase. Default ``step``; empty: no phase starts a trace by name."""

MEMSPAN_STEP_KEEP_EVERY = "MEMSPAN_STEP_KEEP_EVERY"
"""Step sampling: keep one step trace in N of those with nothing worth seeing (steps with an
error, an OOM, a new peak, memory growth or other instrumentations' spans are always kept).
Integer >= 1; default ``1`` (keep every step)."""

MEMSPAN_STEP_KEEP_FIRST = "MEMSPAN_STEP_KEEP_FIRST"
"""Step sampling: the first N steps of a session are always kept. Integer >= 0; default ``10``."""

MEMSPAN_STEP_KEEP_RETAINED_MB = "MEMSPAN_STEP_KEEP_RETAINED_MB"
"""Step sampling: a step whose root phase retained more than this many MiB is kept.
Default ``64``."""

MEMSPAN_STEP_PEAK_INCREASE_MB = "MEMSPAN_STEP_PEAK_INCREASE_MB"
"""Step sampling: a step is kept when one of its phase paths beats its previous peak by more
than this many MiB. Default ``1``."""
