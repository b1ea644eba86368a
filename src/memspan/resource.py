"""memspan's resource detector: process identity, job id, and rank in a multi-rank job;
and the service name a process reports as when nobody named it.

Invariants: it never overrides what the user set (the caller merges the user's resource
over this one); rank figures are validated (``0 <= rank < world_size``), and a bad value is a
:class:`~memspan.config.ConfigError` naming the variable.

``service.name`` falls back to the script or module the interpreter runs (``train`` for
``python train.py``, ``pkg.main`` for ``python -m pkg.main``), the name ``memspan run``
gives its child, wherever memspan builds or adopts the resource and neither
``OTEL_SERVICE_NAME`` nor ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES`` names it (the
SDK's own fallback, ``unknown_service:python3``, says nothing about the job).
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Mapping, Sequence

from opentelemetry.sdk.resources import Resource, ResourceDetector
from opentelemetry.util.types import AttributeValue

from memspan import environment_variables as ev
from memspan import names, otel_names
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


#: the SDK's ``service.name`` when nobody set one (``unknown_service:<executable>``)
UNKNOWN_SERVICE = "unknown_service"
#: interpreter options that take the next word as their value
_OPTIONS_WITH_VALUE = ("-W", "-X", "--check-hash-based-pycs")
_INTERPRETER = re.compile(r"^python[0-9.]*$")


def script_name(arguments: Sequence[str]) -> str | None:
    """The script or module an interpreter's ``arguments`` (its command line after the
    executable) run: ``train`` for ``train.py``, the module for ``-m``; None for ``-c``,
    an interactive interpreter or standard input."""
    index = 0
    while index < len(arguments):
        arg = arguments[index]
        if arg == "-m" and index + 1 < len(arguments):
            return arguments[index + 1]
        if arg.startswith("-m") and len(arg) > 2:
            return arg[2:]
        if arg == "-c" or arg == "-":
            return None
        if arg in _OPTIONS_WITH_VALUE:
            index += 2
            continue
        if not arg.startswith("-"):
            return os.path.splitext(os.path.basename(arg))[0] or None
        index += 1
    return None


def command_service_name(command: Sequence[str]) -> str:
    """The service name of a process started with ``command``: a Python interpreter's script
    or module (:func:`script_name`), else the executable's name."""
    executable = os.path.basename(command[0]) if command else ""
    if _INTERPRETER.match(executable):
        found = script_name(command[1:])
        if found is None and "-c" in command[1:]:
            return executable
        if found:
            return found
    return executable or UNKNOWN_SERVICE


def environment_service_name(env: Mapping[str, str] | None = None) -> str | None:
    """The service name the environment sets: ``OTEL_SERVICE_NAME``, else ``service.name``
    in ``OTEL_RESOURCE_ATTRIBUTES`` (the SDK's order); None when neither does."""
    environ = os.environ if env is None else env
    explicit = environ.get(otel_names.OTEL_SERVICE_NAME, "").strip()
    if explicit:
        return explicit
    for item in environ.get(otel_names.OTEL_RESOURCE_ATTRIBUTES, "").split(","):
        key, _, value = item.partition("=")
        if key.strip() == names.SERVICE_NAME and value.strip():
            return value.strip()
    return None


def fallback_service_name() -> str | None:
    """This process's script or module (``sys.orig_argv``), for a ``service.name`` nobody
    set; None when it runs none (``python -c``) or the environment names the service."""
    if environment_service_name() is not None:
        return None
    argv = getattr(sys, "orig_argv", None) or sys.argv
    return script_name(list(argv[1:])) if argv else None


def is_default_service_name(resource: Resource) -> bool:
    """Whether ``resource``'s ``service.name`` is the SDK's placeholder (``unknown_service``
    or ``unknown_service:<executable>``), which no one chose."""
    value = resource.attributes.get(names.SERVICE_NAME)
    return not value or (isinstance(value, str) and (
        value == UNKNOWN_SERVICE or value.startswith(UNKNOWN_SERVICE + ":")))


def build_resource(service_name: str | None = None, job_id: str | None = None) -> Resource:
    """memspan's attributes, overridden by everything the user set (env and arguments);
    ``service.name`` falls back to the script's name (see the module docstring)."""
    user: dict[str, AttributeValue] = {}
    name = service_name or fallback_service_name()
    if name:
        user[names.SERVICE_NAME] = name
    return Resource(memspan_attributes(job_id=job_id)).merge(Resource.create(user))
