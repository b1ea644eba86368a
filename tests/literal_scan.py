"""Finding names spelled as string literals in src/memspan (docstrings excepted).

Shared by the vocabulary guards: telemetry names belong in ``names.py``, variable names in
``environment_variables.py``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "memspan"


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def literal_names(source: str, pattern: re.Pattern[str]) -> Iterator[str]:
    """Matches of ``pattern`` in the string literals of ``source`` that are not docstrings."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip:
            yield from pattern.findall(node.value)


def literals_outside(home: Path, pattern: re.Pattern[str]) -> set[tuple[str, str]]:
    """(file relative to src/memspan, name) for every match outside ``home``."""
    out = set()
    for path in sorted(SRC.rglob("*.py")):
        if path == home:
            continue
        for name in literal_names(path.read_text(), pattern):
            out.add((str(path.relative_to(SRC)), name))
    return out
