"""What ``memspan run`` says about the child's command line, without leaking credentials.

- By default only the executable's name is exported (``process.executable.name``): command
  arguments often hold tokens (``--hf-token hf_...``), and the semantic conventions make
  ``process.command_args`` opt-in for that reason.
- With the opt-in (``memspan run --export-args``) the arguments are
  exported with the value of every credential-looking flag replaced by ``<redacted>``: a
  flag (or ``NAME=value`` word) whose name contains ``token``, ``secret``, ``key``,
  ``password``, ``passwd``, ``auth`` or ``credential``, in the ``--flag=value`` and
  ``--flag value`` forms, and the password of a ``scheme://user:password@host`` URL.
- The child's service name: ``OTEL_SERVICE_NAME`` (or ``service.name`` in
  ``OTEL_RESOURCE_ATTRIBUTES``) of the child, else the script or module a Python child runs,
  else the executable's name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

from memspan.resource import command_service_name, environment_service_name

REDACTED = "<redacted>"
_CREDENTIAL = re.compile(r"token|secret|key|passw(or)?d|auth|credential", re.IGNORECASE)
_FLAG = re.compile(r"^(--?)([A-Za-z][A-Za-z0-9_.-]*)(=(.*))?$", re.DOTALL)
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*)=(.*)$", re.DOTALL)
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)[^/@\s]*(?P<at>@)")


def executable_name(command: Sequence[str]) -> str:
    return os.path.basename(command[0]) if command else ""


def redact_args(command: Sequence[str]) -> list[str]:
    """``command`` with credential-looking values replaced (see the module docstring)."""
    out: list[str] = []
    redact_next = False
    for arg in command:
        if redact_next:
            redact_next = False
            if not _FLAG.match(arg):
                out.append(REDACTED)
                continue
        flag = _FLAG.match(arg)
        if flag is not None and _CREDENTIAL.search(flag.group(2)):
            if flag.group(3) is not None:
                out.append(f"{flag.group(1)}{flag.group(2)}={REDACTED}")
            else:
                out.append(arg)
                redact_next = True
            continue
        assignment = _ASSIGNMENT.match(arg) if flag is None else None
        if assignment is not None and _CREDENTIAL.search(assignment.group(1)):
            out.append(f"{assignment.group(1)}={REDACTED}")
            continue
        out.append(_URL_PASSWORD.sub(rf"\g<head>{REDACTED}\g<at>", arg))
    return out


def child_service_name(command: Sequence[str], env: Mapping[str, str]) -> str:
    """The service name the child reports as (see the module docstring)."""
    return environment_service_name(env) or command_service_name(command)
