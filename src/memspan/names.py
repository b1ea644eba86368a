"""Every telemetry name memspan emits, in one place.

These names are a public API (dashboards, alerts and trace searches are built on them);
``docs/telemetry.md`` documents each one. Code never spells a name as a literal elsewhere.
"""

from __future__ import annotations

from typing import Final

INSTRUMENTATION_NAME: Final = "memspan"
SCHEMA_URL: Final = "https://opentelemetry.io/schemas/1.37.0"

# -- phase span attributes ------------------------------------------------------------------
PHASE_NAME: Final = "memspan.phase.name"
PHASE_PATH: Final = "memspan.phase.path"
PHASE_DEPTH: Final = "memspan.phase.depth"
PHASE_SCOPE_ID: Final = "memspan.phase.scope_id"
PHASE_PARENT_SCOPE_ID: Final = "memspan.phase.parent_scope_id"
SESSION_ID: Final = "memspan.session.id"
THREAD_ID: Final = "thread.id"
THREAD_NAME: Final = "thread.name"
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
PEAK_EXACT: Final = "memspan.memory.peak_exact"
RETAINED: Final = "memspan.memory.retained"

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
FILE_PATH: Final = "file.path"
LEAK_EVENT: Final = "memspan.leak.suspected"
LEAK_SLOPE: Final = "memspan.leak.slope_bytes_per_run"
LEAK_RUNS: Final = "memspan.leak.runs"

# -- resource attributes --------------------------------------------------------------------
JOB_ID: Final = "memspan.job.id"
RANK: Final = "memspan.rank"
LOCAL_RANK: Final = "memspan.local_rank"
WORLD_SIZE: Final = "memspan.world_size"

# -- metric attributes ----------------------------------------------------------------------
HW_ID: Final = "hw.id"
HW_NAME: Final = "hw.name"
HW_VENDOR: Final = "hw.vendor"
DROP_REASON: Final = "memspan.reason"

# -- metrics --------------------------------------------------------------------------------
GPU_MEMORY_USAGE: Final = "hw.gpu.memory.usage"
GPU_MEMORY_LIMIT: Final = "hw.gpu.memory.limit"
GPU_MEMORY_UTILIZATION: Final = "hw.gpu.memory.utilization"
GPU_UTILIZATION: Final = "hw.gpu.utilization"
GPU_PROCESS_MEMORY_USAGE: Final = "memspan.gpu.process.memory.usage"
TORCH_ALLOCATED: Final = "memspan.torch.memory.allocated"
TORCH_RESERVED: Final = "memspan.torch.memory.reserved"
TORCH_ACTIVE: Final = "memspan.torch.memory.active"
TORCH_INACTIVE_SPLIT: Final = "memspan.torch.memory.inactive_split"
TORCH_ALLOCATED_WINDOW_PEAK: Final = "memspan.torch.memory.allocated.window_peak"
TORCH_RESERVED_WINDOW_PEAK: Final = "memspan.torch.memory.reserved.window_peak"
TORCH_ALLOC_RETRIES: Final = "memspan.torch.alloc_retries"
TORCH_OOMS: Final = "memspan.torch.ooms"
PROCESS_MEMORY_USAGE: Final = "process.memory.usage"
PROCESS_MEMORY_WINDOW_PEAK: Final = "memspan.process.memory.window_peak"
CGROUP_MEMORY_USAGE: Final = "memspan.cgroup.memory.usage"
CGROUP_MEMORY_LIMIT: Final = "memspan.cgroup.memory.limit"
CGROUP_OOM_KILLS: Final = "memspan.cgroup.oom_kills"
PHASE_DURATION: Final = "memspan.phase.duration"
PHASE_MEMORY_PEAK: Final = "memspan.phase.memory.peak"
OOM_COUNT: Final = "memspan.oom.count"
RECORDER_DROPPED: Final = "memspan.recorder.dropped"

# -- the launcher's span (read by the report) ---------------------------------------------
RUN_SPAN: Final = "memspan.run"
