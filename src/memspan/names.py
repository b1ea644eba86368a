"""Every telemetry name memspan emits, in one place.

These names are a public API (dashboards, alerts and trace searches are built on them);
``docs/telemetry.md`` documents each one. Code never spells a name as a literal elsewhere
(``tests/test_telemetry_name_literals.py`` enforces it). Names the OpenTelemetry semantic
conventions define are taken from ``opentelemetry.semconv`` (every constant used here exists
from semconv 0.65b0, the oldest version memspan allows).
"""

from __future__ import annotations

from enum import Enum
from typing import Final

from opentelemetry.semconv._incubating.attributes import (
    file_attributes,
    host_attributes,
    hw_attributes,
    process_attributes,
    thread_attributes,
)
from opentelemetry.semconv._incubating.attributes import (
    service_attributes as incubating_service_attributes,
)
from opentelemetry.semconv._incubating.metrics import hw_metrics, process_metrics
from opentelemetry.semconv.attributes import exception_attributes, service_attributes

INSTRUMENTATION_NAME: Final = "memspan"
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.37.0"

# -- phase span attributes ------------------------------------------------------------------
PHASE_NAME: Final = "memspan.phase.name"
PHASE_PATH: Final = "memspan.phase.path"
PHASE_DEPTH: Final = "memspan.phase.depth"
PHASE_SCOPE_ID: Final = "memspan.phase.scope_id"
PHASE_PARENT_SCOPE_ID: Final = "memspan.phase.parent_scope_id"
SESSION_ID: Final = "memspan.session.id"
THREAD_ID: Final = thread_attributes.THREAD_ID
THREAD_NAME: Final = thread_attributes.THREAD_NAME
MEMORY_DEVICE: Final = "memspan.memory.device"
ALLOCATED_START: Final = "memspan.memory.allocated.start"
ALLOCATED_END: Final = "memspan.memory.allocated.end"
ALLOCATED_PEAK: Final = "memspan.memory.allocated.peak"
RESERVED_START: Final = "memspan.memory.reserved.start"
RESERVED_END: Final = "memspan.memory.reserved.end"
RESERVED_PEAK: Final = "memspan.memory.reserved.peak"
RSS_START: Final = "memspan.memory.rss.start"
RSS_END: Final = "memspan.memory.rss.end"
RSS_PEAK: Final = "memspan.memory.rss.peak"
# free bytes the C allocator keeps in its arenas (counted in RSS, held by no object)
MALLOC_FREE_START: Final = "memspan.memory.malloc_free.start"
MALLOC_FREE_END: Final = "memspan.memory.malloc_free.end"
PEAK_EXACT: Final = "memspan.memory.peak_exact"
RETAINED: Final = "memspan.memory.retained"
PHASE_MISNESTED: Final = "memspan.phase.misnested"
PHASE_PATH_TRUNCATED: Final = "memspan.phase.path_truncated"
PHASE_TRACE_ROOT: Final = "memspan.phase.trace_root"
STEP_KEEP_REASON: Final = "memspan.step.keep_reason"
STEP_DECISION: Final = "memspan.step.decision"

RESERVED_PREFIX: Final = "memspan."
PATH_SEPARATOR: Final = " / "

# -- OOM span events and attributes ---------------------------------------------------------
OOM_EVENT: Final = "memspan.oom"
OOM_KIND: Final = "memspan.oom.kind"
OOM_REASON: Final = "memspan.oom.reason"
OOM_REQUESTED_BYTES: Final = "memspan.oom.requested_bytes"
OOM_DEVICE: Final = "memspan.oom.device"
OOM_DEVICE_FREE_BYTES: Final = "memspan.oom.device_free_bytes"
OOM_DEVICE_TOTAL_BYTES: Final = "memspan.oom.device_total_bytes"
OOM_DUMP_PATH: Final = "memspan.oom.dump.path"
OOM_DUMP_ERROR: Final = "memspan.oom.dump.error"
OOM_CONFIDENCE: Final = "memspan.oom.confidence"
OOM_SUGGESTION: Final = "memspan.oom.suggestion"
FILE_PATH: Final = file_attributes.FILE_PATH
LEAK_EVENT: Final = "memspan.leak.suspected"
LEAK_SLOPE: Final = "memspan.leak.slope_bytes_per_run"
LEAK_RUNS: Final = "memspan.leak.runs"

# -- resource attributes --------------------------------------------------------------------
JOB_ID: Final = "memspan.job.id"
RANK: Final = "memspan.rank"
LOCAL_RANK: Final = "memspan.local_rank"
WORLD_SIZE: Final = "memspan.world_size"

# -- metric attributes ----------------------------------------------------------------------
HW_ID: Final = hw_attributes.HW_ID
HW_NAME: Final = hw_attributes.HW_NAME
HW_VENDOR: Final = hw_attributes.HW_VENDOR
DROP_REASON: Final = "memspan.reason"

# -- metrics --------------------------------------------------------------------------------
GPU_MEMORY_USAGE: Final = hw_metrics.HW_GPU_MEMORY_USAGE
GPU_MEMORY_LIMIT: Final = hw_metrics.HW_GPU_MEMORY_LIMIT
GPU_MEMORY_UTILIZATION: Final = hw_metrics.HW_GPU_MEMORY_UTILIZATION
GPU_UTILIZATION: Final = hw_metrics.HW_GPU_UTILIZATION
GPU_PROCESS_MEMORY_USAGE: Final = "memspan.gpu.process.memory.usage"
TORCH_ALLOCATED: Final = "memspan.torch.memory.allocated"
TORCH_RESERVED: Final = "memspan.torch.memory.reserved"
TORCH_ACTIVE: Final = "memspan.torch.memory.active"
TORCH_INACTIVE_SPLIT: Final = "memspan.torch.memory.inactive_split"
TORCH_ALLOCATED_WINDOW_PEAK: Final = "memspan.torch.memory.allocated.window_peak"
TORCH_RESERVED_WINDOW_PEAK: Final = "memspan.torch.memory.reserved.window_peak"
TORCH_ALLOC_RETRIES: Final = "memspan.torch.alloc_retries"
TORCH_OOMS: Final = "memspan.torch.ooms"
PROCESS_MEMORY_USAGE: Final = process_metrics.PROCESS_MEMORY_USAGE
PROCESS_MEMORY_WINDOW_PEAK: Final = "memspan.process.memory.window_peak"
CGROUP_MEMORY_USAGE: Final = "memspan.cgroup.memory.usage"
CGROUP_MEMORY_LIMIT: Final = "memspan.cgroup.memory.limit"
CGROUP_OOM_KILLS: Final = "memspan.cgroup.oom_kills"
PHASE_DURATION: Final = "memspan.phase.duration"
PHASE_MEMORY_PEAK: Final = "memspan.phase.memory.peak"
PHASE_MEMORY_WINDOW_PEAK: Final = "memspan.phase.memory.window_peak"
STEP_COUNT: Final = "memspan.step.count"
OOM_COUNT: Final = "memspan.oom.count"
RECORDER_DROPPED: Final = "memspan.recorder.dropped"

# -- OOM figures parsed from the allocator's message (appended by the OOM evidence work) --------
OOM_ALLOCATED_BYTES: Final = "memspan.oom.allocated_bytes"
OOM_RESERVED_UNALLOCATED_BYTES: Final = "memspan.oom.reserved_unallocated_bytes"
# -- the memspan run span (launcher) ----------------------------------------------------------
RUN_SPAN: Final = "memspan.run"
PROCESS_EXECUTABLE_NAME: Final = process_attributes.PROCESS_EXECUTABLE_NAME
PROCESS_COMMAND_ARGS: Final = process_attributes.PROCESS_COMMAND_ARGS
PROCESS_COMMAND: Final = process_attributes.PROCESS_COMMAND
PROCESS_PID: Final = process_attributes.PROCESS_PID
PROCESS_EXIT_CODE: Final = process_attributes.PROCESS_EXIT_CODE
RUN_SERVICE_NAME: Final = "memspan.run.service.name"
RUN_PEAK_BYTES: Final = "memspan.run.peak_bytes"
RUN_LIMIT_BYTES: Final = "memspan.run.limit_bytes"
RUN_LIMIT_ENFORCED: Final = "memspan.run.limit.enforced"
RUN_CGROUP_OOM_KILLS: Final = "memspan.run.cgroup_oom_kills"
RUN_BUNDLES: Final = "memspan.run.bundles"
RUN_STALE_BREADCRUMBS: Final = "memspan.run.breadcrumbs.stale"
RUN_DISCARDED_BREADCRUMBS: Final = "memspan.run.breadcrumbs.discarded"
RUN_REFUSED_PATHS: Final = "memspan.run.refused_paths"
RUN_OUTPUT_EVENT: Final = "memspan.run.output"
RUN_OUTPUT_STDOUT: Final = "memspan.run.output.stdout"
RUN_OUTPUT_STDERR: Final = "memspan.run.output.stderr"

# -- resource and exception attributes memspan reads or sets (OTel semantic conventions) -----
SERVICE_NAME: Final = service_attributes.SERVICE_NAME
SERVICE_INSTANCE_ID: Final = incubating_service_attributes.SERVICE_INSTANCE_ID
HOST_NAME: Final = host_attributes.HOST_NAME
EXCEPTION_TYPE: Final = exception_attributes.EXCEPTION_TYPE
EXCEPTION_MESSAGE: Final = exception_attributes.EXCEPTION_MESSAGE
EXCEPTION_STACKTRACE: Final = exception_attributes.EXCEPTION_STACKTRACE
EXCEPTION_ESCAPED: Final = exception_attributes.EXCEPTION_ESCAPED


#: the default last part of a report's file name (``YYYYMMDD_HHMMSS_{ENV}_{SUFFIX}.html``)
REPORT_SUFFIX: Final = "memory_audit"


class EventType(str, Enum):
    """The ``type`` field of every flight-recorder ring event (and breadcrumb line)."""

    PHASE_START = "phase_start"
    PHASE_END = "phase_end"
    SAMPLE = "sample"
    ALLOC_RETRY = "allocator_retry"
    ALLOCATOR_OOM = "allocator_oom"
    CGROUP_OOM_KILL = "cgroup_oom_kill"
    OOM = "oom"
    USER = "user"
