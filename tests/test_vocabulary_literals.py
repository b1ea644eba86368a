"""Variable and entry-point names have one home each, and no string literal in src/ spells
them elsewhere (docstrings, which only talk about them, are allowed):

- ``MEMSPAN_*`` variables: ``memspan/environment_variables.py``;
- ``OTEL_*`` variables and entry-point groups and names (``memspan_file``, ``memspan``...):
  ``memspan/otel_names.py``, which takes the variable names from the OpenTelemetry SDK and
  declares the entry points pyproject.toml registers (a test keeps them equal, and equal to
  the installed distribution's).

Code refers to the constants declared there, so renaming or documenting a variable is one
edit and the docs table, the parser, the bundle allowlist and the packaging cannot drift apart.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import opentelemetry.environment_variables
import opentelemetry.sdk.environment_variables
import pytest

from literal_scan import SRC, literal_names, literal_words, literals_outside, words_outside
from memspan import environment_variables, otel_names

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PYPROJECT = Path(__file__).parents[1] / "pyproject.toml"

HOME = SRC / "environment_variables.py"
NAME = re.compile(r"\bMEMSPAN_[A-Z0-9_]+")

OTEL_HOME = SRC / "otel_names.py"
OTEL_NAME = re.compile(r"\bOTEL_[A-Z0-9_]+")

#: memspan's own name: every message says it, so as an entry-point name it is found only as a
#: whole literal (or an item of a comma-separated list, as in a variable's value)
PACKAGE = "memspan"

# Literals in files other sessions own at the time of writing; the lead removes them at merge.
# Listed so the tests still catch every NEW literal. (file relative to src/memspan, name)
KNOWN: set[tuple[str, str]] = set()
OTEL_KNOWN: set[tuple[str, str]] = set()
ENTRY_POINT_KNOWN: set[tuple[str, str]] = set()

#: whole literals that are the word ``memspan`` in another meaning than an entry point's name:
#: (file relative to src/memspan, enclosing class/function, word)
OTHER_MEANINGS: set[tuple[str, str, str]] = {
    ("cli/__init__.py", "build_parser", PACKAGE),  # the command's name (argparse prog)
    ("drops.py", "<module>", PACKAGE),  # the package's logger
    ("environment_variables.py", "ConfigError", PACKAGE),  # the module tracebacks show
    ("names.py", "<module>", PACKAGE),  # the instrumentation scope (a telemetry name)
    ("oom/recorder.py", "environment_report", PACKAGE),  # a bundle's package-version key
}


# -- MEMSPAN_* --------------------------------------------------------------------------------
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


# -- OTEL_* -----------------------------------------------------------------------------------
def test_no_new_otel_variable_literal_outside_otel_names() -> None:
    new = found_otel() - OTEL_KNOWN
    assert not new, f"spell these through memspan.otel_names constants: {sorted(new)}"


def test_the_otel_detector_sees_literals_and_name_pieces() -> None:
    source = ('"""Reads ``OTEL_X``."""\n'
              'def f():\n    """OTEL_Y in a docstring."""\n'
              '    return env.get("OTEL_Z"), f"OTEL_EXPORTER_{signal}_PROTOCOL", "OTEL_* variables"\n')
    assert sorted(literal_names(source, OTEL_NAME)) == ["OTEL_EXPORTER_", "OTEL_Z"]


def test_the_otel_known_list_has_no_stale_entry() -> None:
    stale = OTEL_KNOWN - found_otel()
    assert not stale, f"remove from OTEL_KNOWN: {sorted(stale)}"


def _opentelemetry_variables() -> dict[str, str]:
    """Every ``OTEL_*`` constant of the installed SDK and API: value -> module.constant."""
    out: dict[str, str] = {}
    for module in (opentelemetry.sdk.environment_variables, opentelemetry.environment_variables):
        for constant, value in vars(module).items():
            if constant.startswith("OTEL_") and isinstance(value, str):
                out.setdefault(value, f"{module.__name__}.{constant}")
    return out


def test_otel_names_take_variable_names_from_opentelemetry() -> None:
    defined = _opentelemetry_variables()
    assert defined["OTEL_SERVICE_NAME"].endswith(".OTEL_SERVICE_NAME")  # the scan itself works
    spelled = sorted(f"{name} (use {defined[name]})"
                     for name in literal_names(OTEL_HOME.read_text(), OTEL_NAME) if name in defined)
    assert not spelled, f"otel_names.py spells names OpenTelemetry defines: {spelled}"
    declared = {c: v for c, v in vars(otel_names).items() if c.startswith("OTEL_")}
    assert declared and all(constant == value for constant, value in declared.items())


def test_the_registry_takes_every_otel_name_from_otel_names() -> None:
    registered = {name for name in environment_variables.REGISTRY if name.startswith("OTEL_")}
    assert registered  # the standard variables memspan validates
    assert {name for name in registered if getattr(otel_names, name, None) != name} == set()


def found_otel() -> set[tuple[str, str]]:
    return literals_outside(OTEL_HOME, OTEL_NAME)


# -- entry points -----------------------------------------------------------------------------
def _pyproject_entry_points() -> dict[str, frozenset[str]]:
    tables = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"]
    return {group: frozenset(table) for group, table in tables.items()}


def _installed_entry_points() -> dict[str, frozenset[str]]:
    out: dict[str, set[str]] = {}
    for entry_point in importlib.metadata.distribution("memspan").entry_points:
        if entry_point.group != "console_scripts":  # [project.scripts], not an entry-point table
            out.setdefault(entry_point.group, set()).add(entry_point.name)
    return {group: frozenset(names) for group, names in out.items()}


def test_declared_entry_points_are_pyprojects_and_the_installed_distributions() -> None:
    declared = dict(otel_names.ENTRY_POINTS)
    assert declared == _pyproject_entry_points()
    assert declared == _installed_entry_points(), "reinstall: pip install -e ."
    for group, names in declared.items():
        for name in names:  # the look-up the SDK and opentelemetry-instrument make
            found = importlib.metadata.entry_points(group=group, name=name)
            assert [e.dist.name for e in found if e.dist is not None] == ["memspan"], (group, name)


def _entry_point_words() -> set[str]:
    """Every entry-point group and name, declared or in pyproject.toml."""
    words: set[str] = set()
    for tables in (_pyproject_entry_points(), otel_names.ENTRY_POINTS):
        for group, names in tables.items():
            words |= {group, *names}
    return words


def _entry_point_pattern() -> re.Pattern[str]:
    """Entry-point groups and names other than memspan's own name, anywhere in a literal."""
    distinctive = sorted(_entry_point_words() - {PACKAGE})
    return re.compile(r"\b(?:opentelemetry_[a-z_]+|" + "|".join(map(re.escape, distinctive))
                      + r")\b")


def test_no_new_entry_point_literal_outside_otel_names() -> None:
    new = found_entry_points() - ENTRY_POINT_KNOWN
    assert not new, f"spell these through memspan.otel_names constants: {sorted(new)}"
    whole = found_package_words() - OTHER_MEANINGS
    assert not whole, (f"spell these through memspan.otel_names constants (or, for another "
                       f"meaning of the word, list them in OTHER_MEANINGS): {sorted(whole)}")


def test_the_entry_point_detector_sees_names_and_lists_of_names() -> None:
    assert PACKAGE in _entry_point_words() and "memspan_file" in _entry_point_words()
    source = ('"""``OTEL_TRACES_EXPORTER=memspan_file``."""\n'
              'def f():\n    """memspan in a docstring."""\n'
              '    env["X"] = "memspan_file"\n'
              '    log("memspan: set OTEL_TRACES_EXPORTER=memspan_file")\n'
              '    return "otel,memspan", "memspan", _exporters("opentelemetry_traces_exporter")\n'
              'class C:\n    __module__ = "memspan"\n')
    assert sorted(literal_names(source, _entry_point_pattern())) == [
        "memspan_file", "memspan_file", "opentelemetry_traces_exporter"]
    assert sorted(literal_words(source, {PACKAGE})) == [
        ("C", PACKAGE), ("f", PACKAGE), ("f", PACKAGE)]


def test_the_entry_point_allowlists_have_no_stale_entry() -> None:
    stale = ENTRY_POINT_KNOWN - found_entry_points()
    assert not stale, f"remove from ENTRY_POINT_KNOWN: {sorted(stale)}"
    stale_meanings = OTHER_MEANINGS - found_package_words()
    assert not stale_meanings, f"remove from OTHER_MEANINGS: {sorted(stale_meanings)}"


def found_entry_points() -> set[tuple[str, str]]:
    return literals_outside(OTEL_HOME, _entry_point_pattern())


def found_package_words() -> set[tuple[str, str, str]]:
    assert PACKAGE in _entry_point_words()  # else this guard has nothing to look for
    return words_outside(OTEL_HOME, {PACKAGE})
