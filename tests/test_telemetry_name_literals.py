"""Telemetry names have one home: no ``memspan.*``, ``hw.*``, ``process.*``, ``thread.*``,
``exception.*``, ``service.*`` or ``host.*`` name is spelled as a string literal in src/
outside ``memspan/names.py`` (docstrings are allowed; so are references to memspan's Python API
such as ``memspan.shutdown()`` in messages). And where the OpenTelemetry semantic conventions
define a name, ``names.py`` takes it from ``opentelemetry.semconv`` rather than spelling it.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import opentelemetry.semconv

from literal_scan import SRC, _docstrings, literal_names, literals_outside

HOME = SRC / "names.py"
# A dotted name in one of the namespaces memspan emits or reads; a name followed by "(" is a
# call of memspan's Python API in a message, not telemetry.
NAME = re.compile(r"(?<![\w.])(?:memspan|hw|process|thread|exception|service|host)"
                  r"\.[a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*(?![\w.(])")


def test_no_telemetry_name_literal_outside_the_vocabulary() -> None:
    found_names = found()
    assert not found_names, f"spell these through memspan.names constants: {sorted(found_names)}"


def test_the_detector_sees_literals_and_ignores_docstrings_and_api_calls() -> None:
    source = ('"""Emits ``memspan.phase.name``."""\n'
              'def f():\n    """hw.id in a docstring."""\n'
              '    log("call memspan.shutdown() first")\n'
              '    return a.get("process.pid"), f"{x} memspan.recorder.dropped", "thread.id",\\\n'
              '        ("memspan.run" + ".peak_bytes"), "exception.type", "service.name"\n')
    assert sorted(literal_names(source, NAME)) == [
        "exception.type", "memspan.recorder.dropped", "memspan.run", "process.pid",
        "service.name", "thread.id"]


def _semconv_names() -> dict[str, str]:
    """Every string constant of the installed semantic conventions: value -> module.constant."""
    out: dict[str, str] = {}
    root = Path(next(iter(opentelemetry.semconv.__path__)))
    # _incubating is a namespace package (no __init__.py): pkgutil would not descend into it
    for path in sorted(root.rglob("*.py")):
        if not path.stem.endswith(("_attributes", "_metrics")):
            continue
        module_name = ".".join(("opentelemetry.semconv", *path.relative_to(root).with_suffix(
            "").parts))
        module = importlib.import_module(module_name)
        for constant, value in vars(module).items():
            if constant.isupper() and isinstance(value, str):
                out.setdefault(value, f"{module_name}.{constant}")
    return out


def test_names_take_semantic_convention_names_from_semconv() -> None:
    semconv = _semconv_names()
    assert semconv["process.pid"].endswith("PROCESS_PID")  # the scan itself works
    tree = ast.parse(HOME.read_text())
    skip = _docstrings(tree)
    spelled = sorted(
        f"{node.value} (use {semconv[node.value]})" for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in skip and node.value in semconv)
    assert not spelled, f"names.py spells names the semantic conventions define: {spelled}"


def found() -> set[tuple[str, str]]:
    return literals_outside(HOME, NAME)
