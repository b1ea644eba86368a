"""The import structure: no circle, and every import goes down a floor (docs/architecture.md).

Imports are read from the source (module level, function level and ``TYPE_CHECKING`` blocks
alike): a type-only import that runs back up is still a reader's detour.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"

#: top-level units of the package, from the top floor down; a unit imports only units on
#: lower floors (names on one line share a floor and never import each other)
FLOORS = [
    ["__main__"],
    ["memspan", "cli", "instrumentor", "runtime"],
    ["bootstrap", "auto_phases"],
    ["tracker"],
    ["compat", "report", "launcher"],
    ["oom", "analysis", "instruments"],
    ["export"],
    ["phases"],
    ["sampling"],
    ["sources", "resource"],
    ["metric_catalogue", "config", "reentry"],
    ["environment_variables", "drops", "otel_internals", "fork_safety", "safe_files", "version",
     "package"],
    ["names", "otel_names"],
]

#: the rooms of the phases package, from the top floor down (scope -> core -> record ->
#: build/export; nothing below calls up)
PHASE_FLOORS = [
    ["__init__"],
    ["scope"],
    ["core"],
    ["export"],
    ["span_build", "step_sampling", "histograms", "name_series"],
    ["record"],
    ["span_path", "figures", "handle"],
    ["validation"],
]


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / "memspan").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                submodules = {f"{node.module}.{alias.name}" for alias in node.names} & known.keys()
                targets |= submodules or ({node.module} & known.keys())
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names} & known.keys()
        targets.discard(name)
        graph[name] = targets
    return graph


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "memspan"


def floor_of(name: str, floors: list[list[str]]) -> int:
    for level, names in enumerate(floors):
        if name in names:
            return level
    raise AssertionError(f"{name!r} is on no floor: add it to the floor list in this test")


def test_every_import_between_units_goes_down_a_floor() -> None:
    upward = []
    for module, targets in import_graph().items():
        for target in targets:
            a, b = unit(module), unit(target)
            if a != b and floor_of(a, FLOORS) >= floor_of(b, FLOORS):
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_the_rooms_of_the_phases_package_only_import_downwards() -> None:
    upward = []
    for module, targets in import_graph().items():
        if not module.startswith("memspan.phases"):
            continue
        room = module.split(".")[2] if module.count(".") >= 2 else "__init__"
        for target in targets:
            if not target.startswith("memspan.phases."):
                continue
            if floor_of(room, PHASE_FLOORS) >= floor_of(target.split(".")[2], PHASE_FLOORS):
                upward.append(f"{module} -> {target}")
    assert not upward, upward


def test_there_is_no_import_circle() -> None:
    graph = import_graph()
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                circles.append([*trail[trail.index(target):], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # a package's __init__ re-exporting its own modules is not a circle between rooms
    real = [c for c in circles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not real, real


def test_sources_and_the_metric_catalogue_load_no_flight_recorder_code() -> None:
    graph = import_graph()
    offenders = [f"{m} -> {t}" for m, targets in graph.items()
                 if m.startswith(("memspan.sources", "memspan.metric_catalogue"))
                 for t in targets if t.startswith("memspan.oom")]
    assert not offenders, offenders


def test_import_memspan_loads_no_report_code_until_a_report_is_asked_for() -> None:
    script = ("import sys, memspan\n"
              "print(sorted(m for m in sys.modules if m.startswith('memspan.report')))\n"
              "memspan.ReportResult\n"
              "print('memspan.report.builder' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=60, check=True)
    loaded, after = result.stdout.splitlines()
    assert loaded == "[]"
    assert after == "True"
