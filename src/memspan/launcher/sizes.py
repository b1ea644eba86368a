"""Memory sizes as people write them for Docker and Kubernetes limits.

Accepted: plain bytes (``1048576``), and a number (integer or decimal, never negative)
followed by a unit: ``k``/``m``/``g``/``t`` in either case, optionally followed by ``b``
(``8g``, ``8G``, ``8gb``, ``4096m``), or ``Ki``/``Mi``/``Gi``/``Ti`` optionally followed by
``B`` (``512Mi``, ``1.5Gi``, ``8GiB``). Every unit is binary (``1g`` = 2**30 bytes), as in
Docker; Kubernetes' decimal ``G`` differs by 7 %, which is within the 150 % head-room memspan
suggests. Anything else is a ``ValueError`` quoting the text.
"""

from __future__ import annotations

import re

_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b?)?)?\s*$", re.IGNORECASE)
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4}


def parse_memory_size(text: str) -> int:
    """Bytes in ``text`` (``8g``, ``512Mi``, ``1.5Gi``, ``4096m``, ``1048576``)."""
    if not isinstance(text, str):
        raise TypeError(f"memory size must be a string, got {type(text).__name__}")
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(
            f"invalid memory size {text!r}: expected a non-negative number with an optional "
            "unit, e.g. 8g, 8GiB, 512Mi, 4096m, 1.5Gi or a plain number of bytes"
        )
    number, unit = match.groups()
    if unit is None:
        if "." in number:
            raise ValueError(f"invalid memory size {text!r}: a plain byte count must be whole")
        return int(number)
    return int(float(number) * (1024 ** _POWERS[unit.lower()]))


def format_mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.0f} MiB"
