"""The drawing of imports: no cycle between our modules, and the engine never imports the UI, the app or the
tests. Read from the source with `ast` (nothing is imported); imports under `if TYPE_CHECKING:` are left out,
lazy imports inside functions count. `python tests/test_imports.py` prints the levels."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("magihuman", "studio", "acceptance", "tests")
ENGINE_MAY_NOT_IMPORT = ("studio", "app", "tests", "acceptance")


def module_files() -> dict[str, Path]:
    """Module name -> file, for our packages and app.py."""
    files = {"app": ROOT / "app.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
            else:
                stack.append(child)


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (`from a import b` names a.b when b is a module)."""
    files = module_files()
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def levels(graph: dict[str, set[str]]) -> dict[str, int]:
    """Level 0: imports nothing of ours; otherwise one above the highest module it imports (the modules of a
    cycle share one level)."""
    component = {m: tuple(c) for c in cycles(graph) for m in c}
    level: dict[str, int] = {}

    def of(node: str) -> int:
        if node not in level:
            members = component.get(node, (node,))
            for m in members:
                level[m] = -1  # in progress: edges inside the cycle do not lift it
            below = {n for m in members for n in graph[m]} - set(members)
            value = 1 + max((of(n) for n in below), default=-1)
            for m in members:
                level[m] = value
        return level[node]

    for node in graph:
        of(node)
    return level


def _production(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    keep = {n for n in graph if n.split(".")[0] in ("magihuman", "studio", "app")}
    return {n: graph[n] & keep for n in keep}


def test_no_import_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_engine_imports_no_ui_app_tests_or_acceptance() -> None:
    graph = import_graph()
    upward = {
        (name, target)
        for name, targets in graph.items()
        if name.split(".")[0] == "magihuman"
        for target in targets
        if target.split(".")[0] in ENGINE_MAY_NOT_IMPORT
    }
    assert upward == set()


def test_the_studio_does_not_import_the_engine_command_line() -> None:
    graph = import_graph()
    assert {n for n, targets in graph.items() if n.startswith("studio") and "magihuman.__main__" in targets} == set()


def test_the_graph_reader_sees_lazy_and_relative_imports(tmp_path) -> None:
    """The reader must see what it is asked to forbid: an import inside a function counts."""
    graph = import_graph()
    assert "magihuman.config" in graph["magihuman.engine"]
    assert any(n.startswith("studio") for n in graph["app"])


if __name__ == "__main__":
    g = _production(import_graph())
    found = cycles(g)
    print(f"{len(g)} production modules, {sum(map(len, g.values()))} imports, cycles: {found or 'none'}")
    by_level: dict[int, list[str]] = {}
    for name, lv in levels(g).items():
        by_level.setdefault(lv, []).append(name)
    for lv in sorted(by_level):
        print(f"{lv:>2}: {' '.join(sorted(by_level[lv]))}")
