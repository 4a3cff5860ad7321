"""The package's shape: no import cycle, no private name crossing modules, one loop."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "memtx"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) of every ``import``/``from`` anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found.extend((a.name, [], node.lineno) for a in node.names)
    return found


def _target(module: str, names: list[str]) -> list[str]:
    """The package modules an import statement loads (``from pkg import sub`` loads sub)."""
    out = []
    if module in MODULES:
        out.append(module)
        out.extend(f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES)
    return out


def test_no_import_cycle() -> None:
    # Function-level (lazy) imports count too: a cycle they hold open is still a cycle.
    graph = {
        name: {t for module, names, _ in _imports(path) for t in _target(module, names)} - {name}
        for name, path in MODULES.items()
    }
    # A package's __init__ importing its own submodules is not a cycle of concerns.
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_no_private_name_is_imported_from_another_module() -> None:
    crossing = [
        f"{_module_name(path)}:{line} imports {name} from {module}"
        for path in MODULES.values()
        for module, names, line in _imports(path)
        if module.startswith("memtx")
        for name in names
        if name.startswith("_") and not name.startswith("__")
    ]
    assert not crossing, "\n".join(crossing)


def test_every_module_reads_top_to_bottom() -> None:
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 500
    }
    assert not long, f"modules over 500 lines: {long}"


def test_one_module_steps_an_optimizer() -> None:
    # The benchmark rows that drive other packages (memtx.bench.peers) aside.
    stepping = {
        name
        for name, path in MODULES.items()
        if "optimizer.step(" in path.read_text(encoding="utf-8")
        and not name.startswith("memtx.bench.peer")
    }
    assert stepping == {"memtx.training.loop"}
