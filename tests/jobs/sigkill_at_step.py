"""The CNN job killed by SIGKILL inside ``train > step(step=30) > forward``, under ``memspan run``.

Run as ``python -m memspan run --output-dir W/memspan-out --dump-dir W/oom_dumps -- python
tests/jobs/sigkill_at_step.py W``. At step 30, in the forward phase (before the model runs),
the job writes its log (with the kill's time) and sends itself SIGKILL, as the kernel's OOM
killer would: no Python code runs after it, the DataLoader workers are left to notice their
parent's death. The breadcrumb bundle ``memspan run`` writes must show the open stack
``train > step > forward`` with ``step=30``. Truth: sigkill_at_step.truth.json.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from jobkit import JobLog, cnn_setup, train, workdir_from_argv

KILL_AT_STEP = 30


def kill_now(step: int, model_and_inputs: Any) -> None:
    if step == KILL_AT_STEP:
        LOG.write(kill_step=step, kill_time_ns=time.time_ns())
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    workdir = workdir_from_argv()
    LOG = JobLog(workdir, "sigkill_at_step")
    train("sigkill_at_step", workdir, cnn_setup, in_forward=kill_now, log=LOG)
    raise SystemExit("sigkill_at_step: still alive after SIGKILL")
