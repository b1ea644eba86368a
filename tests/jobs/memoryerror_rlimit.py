"""The CNN job hitting a real MemoryError under RLIMIT_AS in ``train > step(step=30) > forward``.

At step 30 the forward phase computes a host-side similarity matrix of the batch against an
oversized feature bank with numpy, with the address space limited (``resource.setrlimit
(RLIMIT_AS)``) to what the process maps now plus 1 GiB: numpy's 8 GiB request fails with a
real ``MemoryError`` (numpy's ``_ArrayMemoryError``). It propagates out of every phase; the job
catches it outside them, restores the limit, writes its log and shuts memspan down (exit 0).
memspan must leave one OOM bundle whose phase stack is ``train > step > forward`` with
``step=30``. Truth: memoryerror_rlimit.truth.json.

    python tests/jobs/memoryerror_rlimit.py WORKDIR
"""

from __future__ import annotations

import resource
import time
from typing import Any

import numpy as np
from jobkit import JobLog, cnn_setup, train, workdir_from_argv

FAIL_AT_STEP = 30
HEADROOM = 1 << 30
REQUEST = 8 << 30
SAVED_LIMIT = resource.getrlimit(resource.RLIMIT_AS)


def mapped_bytes() -> int:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[0]) * resource.getpagesize()


def similarity_to_bank(step: int, model_and_inputs: Any) -> None:
    if step != FAIL_AT_STEP:
        return
    _model, inputs = model_and_inputs
    limit = mapped_bytes() + HEADROOM
    resource.setrlimit(resource.RLIMIT_AS, (limit, SAVED_LIMIT[1]))
    LOG.data.update(limited_to_bytes=limit, oom_step=step, oom_time_ns=time.time_ns())
    bank = np.empty((REQUEST // (4 * inputs.shape[0]), inputs.shape[0]), dtype=np.float32)
    LOG.data["not_reached"] = bank.shape  # pragma: no cover - the allocation fails


if __name__ == "__main__":
    workdir = workdir_from_argv()
    LOG = JobLog(workdir, "memoryerror_rlimit")
    try:
        train("memoryerror_rlimit", workdir, cnn_setup, in_forward=similarity_to_bank, log=LOG)
    except MemoryError as error:
        resource.setrlimit(resource.RLIMIT_AS, SAVED_LIMIT)
        LOG.write(caught=f"{type(error).__module__}.{type(error).__qualname__}",
                  caught_ns=time.time_ns())
        import memspan

        memspan.shutdown()
        print(f"memoryerror_rlimit: caught {type(error).__name__} at step {FAIL_AT_STEP}")
    else:
        raise SystemExit("memoryerror_rlimit: the allocation did not fail")
