"""Variable names have one home: no ``MEMSPAN_*`` name is spelled as a string literal in src/
outside ``memspan/environment_variables.py`` (docstrings, which only talk about variables, are
allowed). Code refers to the constants declared there, so renaming or documenting a variable is
one edit and the docs table, the parser and the bundle allowlist cannot drift apart.
"""

from __future__ import annotations

import re

from literal_scan import SRC, literal_names, literals_outside

HOME = SRC / "environment_variables.py"
NAME = re.compile(r"\bMEMSPAN_[A-Z0-9_]+")

# Literals in files other sessions own at the time of writing; the lead removes them at merge.
# Listed so the test still catches every NEW literal. (file relative to src/memspan, name)
KNOWN: set[tuple[str, str]] = set()


def test_no_new_memspan_variable_literal_outside_the_registry() -> None:
    new = found() - KNOWN
    assert not new, (f"spell these through memspan.environment_variables constants: "
                     f"{sorted(new)}")


def test_the_detector_sees_literals_and_ignores_docstrings() -> None:
    source = ('"""Reads ``MEMSPAN_X``."""\n'
              'def f():\n    """MEMSPAN_Y in a docstring."""\n'
              '    return env.get("MEMSPAN_Z"), f"{a}MEMSPAN_W"\n')
    assert sorted(literal_names(source, NAME)) == ["MEMSPAN_W", "MEMSPAN_Z"]


def test_the_known_list_has_no_stale_entry() -> None:
    # A stale entry could hide a new literal of the same name in that file: when a literal is
    # removed from src/, remove it from KNOWN too.
    stale = KNOWN - found()
    assert not stale, f"remove from KNOWN: {sorted(stale)}"


def found() -> set[tuple[str, str]]:
    return literals_outside(HOME, NAME)
