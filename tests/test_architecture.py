"""The rooms of ``pytest_kvmmm`` stay as the README draws them, read from the source with ``ast``:
which room imports which (downward only, no cycle), pytest only in the adapter, and modules
and functions small enough to read (about 400 and 60 lines). A failure names the module, the
import or the function, so the fix is where the message points."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_kvmmm"
#: room -> the rooms it may import. ``""`` is the package itself (``__version__``, the
#: ``requirements`` re-exports). The order is the architecture: the host model and the cache
#: know nothing else; coordination changes and shares the host; the engine runs one selftest;
#: the suite is the catalogue of cases; reports and baselines read results; ab and the lab are
#: tools over them; the pytest adapter may use everything but the tools.
MAY_IMPORT: dict[str, set[str]] = {
    "": {"engine", "pytest"},  # requirements.py re-exports engine.requirements; plugin.py the adapter
    "host": set(),
    "provision": set(),
    "coordination": {"host"},
    "engine": {"host", "provision", "coordination"},
    "suite": {"host", "coordination", "engine"},
    "reports": {"host", "coordination", "engine", "suite"},
    "baseline": {"host", "provision", "coordination", "engine"},
    "ab": {"host", "provision", "coordination", "engine", "baseline"},
    "lab": {"host", "provision", "suite", "reports"},
    "pytest": {"host", "provision", "coordination", "engine", "suite", "reports", "baseline"},
}
#: Where ``import pytest`` belongs: the adapter and the entry point, and the test modules the
#: package ships (``suite/test_*.py``, collected by pytest like any test file), which may also
#: use the adapter's stash keys.
PYTEST_ROOMS = {"pytest"}
PYTEST_MODULES = {"pytest_kvmmm.plugin"}


def is_test_module(module: str) -> bool:
    return module.rsplit(".", 1)[-1].startswith("test_")
MAX_MODULE_LINES = 420  # "about 400"
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room(module: str) -> str:
    """``pytest_kvmmm.engine.process`` -> ``engine``; a module of the package itself -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else ""


@cache
def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import that runs (module level or in a function), not those under TYPE_CHECKING."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            yield from (n for child in node.orelse for n in _imports(ast.Module([child], [])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from _imports(node)


def imported(module: str) -> set[str]:
    """The names ``module`` imports, absolute (``from . import x`` gives ``pkg.x`` and ``pkg``)."""
    path = modules()[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = set()
    for node in _imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        base = ".".join([*package[: len(package) - node.level + 1], *([node.module] if node.module else [])]) \
            if node.level else (node.module or "")  # fmt: skip
        names.add(base)
        names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@cache
def graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports at run time."""
    mods = modules()
    return {m: {n for n in imported(m) if n in mods and n != m} for m in mods}


def test_rooms_import_only_the_rooms_below_them() -> None:
    wrong = sorted(
        f"{m} imports {n} ({room(m) or 'the package'} may import {sorted(MAY_IMPORT[room(m)]) or 'no other room'})"
        for m, targets in graph().items() for n in targets
        if room(n) != room(m) and room(n) not in MAY_IMPORT[room(m)] and n != "pytest_kvmmm"
        and not (is_test_module(m) and room(n) == "pytest")
    )  # fmt: skip
    assert not wrong, "\n".join(wrong)
    assert set(MAY_IMPORT) >= {room(m) for m in modules()}, "a new room: say what it may import"


def test_the_host_model_knows_nothing_of_the_engine_or_the_suite() -> None:
    """The issue's named case: host/ used to import engine.kernel_health and suite.backing."""
    host = [m for m in modules() if room(m) == "host"]
    assert host and not [(m, n) for m in host for n in graph()[m] if room(n) in ("engine", "suite")]


def test_no_import_cycle() -> None:
    edges, index, low, stack, on_stack, cycles = graph(), {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def test_pure_modules_import_no_pytest() -> None:
    users = sorted(
        m for m in modules()
        if {n.split(".")[0] for n in imported(m)} & {"pytest", "_pytest"}
        and room(m) not in PYTEST_ROOMS and m not in PYTEST_MODULES and not is_test_module(m)
    )  # fmt: skip
    assert not users, f"pytest imported outside the adapter (pytest_kvmmm/pytest/): {users}"


def test_modules_stay_small() -> None:
    big = sorted(
        f"{module_name(p)}: {n} lines" for p in modules().values() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    )
    assert not big, f"modules over {MAX_MODULE_LINES} lines: {big}"


def test_functions_stay_small() -> None:
    def length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
        return (node.end_lineno or node.lineno) - node.lineno + 1  # the docstring counts

    long = sorted(
        f"{module_name(p)}:{node.lineno} {node.name}: {length(node)} lines"
        for p in modules().values() for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and length(node) > MAX_FUNCTION_LINES
    )  # fmt: skip
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_the_checks_see_the_package() -> None:
    """The checks above would pass on nothing: they read every room, and a known import."""
    assert {room(m) for m in modules()} >= {"host", "engine", "suite", "pytest", "reports", "lab"}
    assert "pytest_kvmmm.engine.engine" in graph()["pytest_kvmmm.pytest.engine_setup"]
    assert "pytest_kvmmm.host.model" in graph()["pytest_kvmmm.engine.engine"]
    assert "pytest" in {n.split(".")[0] for n in imported("pytest_kvmmm.pytest.session")}
