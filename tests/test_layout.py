"""The shape of the tree: dependencies point inward, no import circles, rooms of readable size.

``revocation`` (the domain and its storage, keys, coordination, propagation and admin API)
imports neither ``responders`` nor ``publishers``; those two import ``revocation`` but not each
other; only the process layer ``pca`` imports all three, and nothing imports it. A module
that grows past ``MAX_LINES`` must say why in ``LARGE_MODULES``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("revocation", "responders", "publishers", "pca")
MAY_IMPORT = {
    "revocation": {"revocation"},
    "responders": {"revocation", "responders"},
    "publishers": {"revocation", "publishers"},
    "pca": set(PACKAGES),
}
MAX_LINES = 450
# module -> why it is longer than MAX_LINES
LARGE_MODULES: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[tuple[str, int]]:
    """The project modules ``name`` imports anywhere in its body (lazy imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # "from pkg import mod" names the module itself when there is one
                target = f"{base}.{alias.name}"
                yield (target if target in MODULES else base), node.lineno


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        graph[name] = {target for target, _ in _imports(name, path) if target in MODULES and target != name}
    return graph


def test_the_tree_is_found() -> None:
    # The checks below would pass vacuously on an empty tree.
    assert {"revocation.events", "responders.app", "publishers.storer", "pca.serve"} <= MODULES.keys()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_dependencies_point_inward(name: str) -> None:
    top = name.split(".")[0]
    wrong = [
        f"{target} (line {line})"
        for target, line in _imports(name, MODULES[name])
        if target.split(".")[0] in PACKAGES and target.split(".")[0] not in MAY_IMPORT[top]
    ]
    assert not wrong, f"{name} may import only {sorted(MAY_IMPORT[top])}, but imports {wrong}"


def test_no_import_circles() -> None:
    graph = _graph()
    # Tarjan's strongly connected components: any component of two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    assert not circles, f"import circles: {circles}"


# Calls that load a module named by a string or a path (importlib, importlib.util and
# importlib.machinery, runpy, the builtin __import__).
LOADERS = frozenset(
    {
        "__import__",
        "import_module",
        "spec_from_file_location",
        "spec_from_loader",
        "module_from_spec",
        "exec_module",
        "load_module",
        "SourceFileLoader",
        "run_module",
        "run_path",
    }
)
LOADER_MODULES = ("importlib", "runpy")


def _loads_by_name(path: Path) -> Iterator[str]:
    """Where ``path`` loads a module by a string. Starting a third-party program by its literal
    name (``runpy.run_module("granian")``) loads none of ours and is allowed."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in LOADER_MODULES:
            for alias in node.names:
                if alias.name in LOADERS:
                    yield f"from {node.module} import {alias.name} (line {node.lineno})"
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name not in LOADERS:
                continue
            first = node.args[0] if node.args else None
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                if first.value.split(".")[0] not in PACKAGES and name in ("run_module", "import_module"):
                    continue
            yield f"{ast.unparse(func)}(...) (line {node.lineno})"


def test_roles_are_not_loaded_by_name() -> None:
    """Every role is imported by a plain import statement, so the dependency checks above see it."""
    offenders = {name: found for name, path in MODULES.items() if (found := list(_loads_by_name(path)))}
    assert not offenders, f"modules loading code by string: {offenders}"


@pytest.mark.parametrize(
    "source",
    [
        "import importlib\nrole = importlib.import_module('pca.roles.' + name)",
        "from importlib import import_module as load\n",
        "mod = __import__(name)",
        "spec = importlib.util.spec_from_file_location('role', path)\nm = importlib.util.module_from_spec(spec)",
        "from importlib.util import module_from_spec",
        "import runpy\nrunpy.run_path(script)",
        "import runpy\nrunpy.run_module('pca.serve')",
    ],
)
def test_loading_by_name_is_caught(tmp_path: Path, source: str) -> None:
    module = tmp_path / "m.py"
    module.write_text(source)
    assert list(_loads_by_name(module))


def test_starting_a_third_party_program_is_not_loading_by_name(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import runpy\nrunpy.run_module('granian', run_name='__main__')")
    assert not list(_loads_by_name(module))


def test_no_wait_for_that_could_swallow_a_cancellation() -> None:
    """On Python 3.11, ``asyncio.wait_for`` returns normally when its task is cancelled just as what it
    waits for completes, and the cancelled loop goes on: waits go through ``revocation.waiting``."""
    offenders = [name for name, path in MODULES.items() if "asyncio.wait_for(" in path.read_text()]
    assert not offenders, f"asyncio.wait_for in {offenders}: use revocation.waiting.wait_event or asyncio.timeout"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_readable(name: str) -> None:
    lines = len(MODULES[name].read_text().splitlines())
    if name in LARGE_MODULES:
        return
    assert lines <= MAX_LINES, f"{name} has {lines} lines (> {MAX_LINES}): split it, or say why in LARGE_MODULES"
