"""memspan's resource detector: process identity, job id, and rank in a multi-rank job.

Invariants: it never overrides what the user set (the caller merges the user's resource
over this one); rank figures are validated (``0 <= rank < world_size``), and a bad value is a
:class:`~memspan.config.ConfigError` naming the variable.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping

from opentelemetry.sdk.resources import Resource, ResourceDetector
from opentelemetry.util.types import AttributeValue

from memspan import environment_variables as ev
from memspan import names
from memspan.config import ConfigError

_PROCESS_INSTANCE_ID = str(uuid.uuid4())


def _int_variable(env: Mapping[str, str], variable: str) -> int | None:
    value = ev.read(variable, env)
    return None if value is None else int(value)


def rank_identity(env: Mapping[str, str] | None = None) -> dict[str, int]:
    """Rank, local rank and world size from the launcher's variables (validated)."""
    environ = os.environ if env is None else env
    for rank_var, local_var, size_var in ev.RANK_VARIABLES:
        rank = _int_variable(environ, rank_var)
        if rank is None:
            continue
        out = {names.RANK: rank}
        local = _int_variable(environ, local_var)
        size = _int_variable(environ, size_var)
        if local is not None:
            out[names.LOCAL_RANK] = local
        if size is not None:
            if rank >= size:
                raise ConfigError(
                    f"{rank_var}={rank} must be smaller than {size_var}={size}"
                )
            out[names.WORLD_SIZE] = size
        return out
    return {}


def rank_identity_or_default(rank: int = 0) -> dict[str, int]:
    """:func:`rank_identity`, or just ``rank`` when the variables are absent or invalid.

    For code that must not fail on bad variables (a tracker, a bundle name): the resource
    detector, at the edge, is where a bad value is reported.
    """
    try:
        identity = rank_identity()
    except ConfigError:
        identity = {}
    identity.setdefault(names.RANK, rank)
    return identity


def detected_rank() -> int:
    """This process's rank in a multi-rank job, 0 when there is none (or it is invalid)."""
    return rank_identity_or_default()[names.RANK]


def memspan_attributes(
    env: Mapping[str, str] | None = None, job_id: str | None = None
) -> dict[str, AttributeValue]:
    environ = os.environ if env is None else env
    attributes: dict[str, AttributeValue] = {names.SERVICE_INSTANCE_ID: _PROCESS_INSTANCE_ID}
    job = (job_id or environ.get(ev.MEMSPAN_JOB_ID) or environ.get(ev.TORCHELASTIC_RUN_ID)
           or environ.get(ev.SLURM_JOB_ID))
    if job:
        attributes[names.JOB_ID] = job
    attributes.update(rank_identity(environ))
    return attributes


class MemspanResourceDetector(ResourceDetector):
    """Registered as the ``memspan`` resource detector entry point."""

    def detect(self) -> Resource:
        return Resource(memspan_attributes())


def build_resource(service_name: str | None = None, job_id: str | None = None) -> Resource:
    """memspan's attributes, overridden by everything the user set (env and arguments)."""
    user: dict[str, AttributeValue] = {}
    if service_name:
        user[names.SERVICE_NAME] = service_name
    return Resource(memspan_attributes(job_id=job_id)).merge(Resource.create(user))
