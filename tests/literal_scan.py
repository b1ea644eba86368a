"""Finding names spelled as string literals in src/memspan (docstrings excepted).

Shared by the vocabulary guards: telemetry names belong in ``names.py``, memspan's variable
names in ``environment_variables.py``, ``OTEL_*`` variable names and entry-point names in
``otel_names.py``.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Iterator
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


def scoped_literals(source: str) -> Iterator[tuple[str, str]]:
    """(scope, value) of every string literal of ``source`` that is not a docstring; the scope
    is the dotted name of the enclosing classes and functions (``<module>`` at the top)."""
    tree = ast.parse(source)
    skip = _docstrings(tree)

    def visit(node: ast.AST, scope: str) -> Iterator[tuple[str, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = child.name if scope == "<module>" else f"{scope}.{child.name}"
                yield from visit(child, inner)
            elif isinstance(child, ast.Constant):
                if isinstance(child.value, str) and id(child) not in skip:
                    yield scope, child.value
            else:
                yield from visit(child, scope)

    yield from visit(tree, "<module>")


def literal_names(source: str, pattern: re.Pattern[str]) -> Iterator[str]:
    """Matches of ``pattern`` in the string literals of ``source`` that are not docstrings."""
    for _scope, value in scoped_literals(source):
        yield from pattern.findall(value)


def literal_words(source: str, words: Collection[str]) -> Iterator[tuple[str, str]]:
    """(scope, word) for every literal of ``source`` that is one of ``words`` as a whole, or
    holds one as an item of a comma-separated list (``"otel,memspan"``)."""
    for scope, value in scoped_literals(source):
        for item in value.split(","):
            if item.strip() in words:
                yield scope, item.strip()


def literals_outside(home: Path, pattern: re.Pattern[str]) -> set[tuple[str, str]]:
    """(file relative to src/memspan, name) for every match outside ``home``."""
    out = set()
    for path in sorted(SRC.rglob("*.py")):
        if path == home:
            continue
        for name in literal_names(path.read_text(), pattern):
            out.add((str(path.relative_to(SRC)), name))
    return out


def words_outside(home: Path, words: Collection[str]) -> set[tuple[str, str, str]]:
    """(file relative to src/memspan, scope, word) for every :func:`literal_words` hit outside
    ``home``."""
    out = set()
    for path in sorted(SRC.rglob("*.py")):
        if path == home:
            continue
        for scope, word in literal_words(path.read_text(), words):
            out.add((str(path.relative_to(SRC)), scope, word))
    return out
