"""Text that is safe to print on a terminal, and printing that survives a closed pipe.

Invariants:

- :func:`printable` never returns a control character: C0/C1 controls (ESC included),
  DEL, format characters (bidirectional overrides, zero-width joiners) and line/paragraph
  separators are shown as visible ``\\xNN``/``\\uNNNN`` escapes, so a value read from an
  untrusted file can neither move the cursor, recolour the terminal nor fake a line.
- :func:`write_lines` turns a reader that went away (``| head``) into a quiet return value:
  no ``BrokenPipeError`` traceback now or at interpreter exit.
"""

from __future__ import annotations

import os
import sys
import unicodedata
from collections.abc import Iterable

_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"})


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 \
        else f"\\U{code:08x}"


def printable(value: object, limit: int = 200) -> str:
    """``value`` as one line of at most about ``limit`` characters, control characters escaped."""
    if value is None:
        return "unknown"
    if isinstance(value, str):
        text = value
    else:
        try:
            text = str(value)
        except Exception:
            text = f"<unprintable {type(value).__name__}>"
    cut = len(text) > limit
    text = text[:limit]
    if not text.isprintable():
        text = "".join(_escape(c) if unicodedata.category(c) in _UNSAFE_CATEGORIES else c
                       for c in text)
    return text + "..." if cut else text


def write_lines(lines: Iterable[str]) -> bool:
    """Write ``lines`` to stdout; False (quietly) when the reader closed the pipe."""
    try:
        for line in lines:
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        return False
    return True


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
