"""The packages' doors: every name of each ``__all__`` resolves, the cheap packages stay cheap to
import, and the repository's own modules import each other without a cycle."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("medimg", "pipelines", "saliency", "uncertainty", "continual")


# --------------------------------------------------------------------------------------------
# __all__


@pytest.mark.parametrize("name", PACKAGES)
def test_every_name_of_all_resolves(name: str) -> None:
    package = importlib.import_module(name)
    exported = list(package.__all__)
    assert exported, f"{name}.__all__ is empty"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"
    missing = [n for n in exported if not hasattr(package, n)]
    assert not missing, f"{name}.__all__ names what {name} does not have: {missing}"
    assert set(exported) <= set(dir(package)), f"dir({name}) lacks part of __all__"


@pytest.mark.parametrize("name", PACKAGES)
def test_no_exported_name_shadows_a_submodule(name: str) -> None:
    """``from pkg import x`` must not depend on whether ``pkg.x`` the submodule was imported first."""
    package = importlib.import_module(name)
    submodules = {info.name for info in pkgutil.iter_modules(package.__path__)}
    assert not set(package.__all__) & submodules


def _bound_names(path: Path) -> tuple[set[str], set[str]]:
    """Names a module binds at top level, and those it imports only under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bound: set[str] = set()
    typing_only: set[str] = set()
    for node in tree.body:
        if _is_type_checking_block(node):
            assert isinstance(node, ast.If)
            for inner in node.body:
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    typing_only |= {(a.asname or a.name).split(".")[0] for a in inner.names}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            bound |= {t.id for t in targets if isinstance(t, ast.Name)}
    return bound, typing_only


@pytest.mark.parametrize("name", PACKAGES)
def test_type_checkers_see_every_exported_name(name: str) -> None:
    """A name exported lazily (module ``__getattr__``) is imported under ``TYPE_CHECKING`` too, so that
    mypy and editors know its type, and nothing is imported there that the door does not export."""
    package = importlib.import_module(name)
    bound, typing_only = _bound_names(Path(package.__file__))
    unseen = set(package.__all__) - bound - typing_only
    assert not unseen, f"{name}.__all__ names {sorted(unseen)}, which type checkers cannot see"
    assert typing_only <= set(package.__all__), f"{name} imports unexported names under TYPE_CHECKING"


# --------------------------------------------------------------------------------------------
# import cost


@pytest.mark.parametrize(("name", "heavy"), [("medimg", ("torch", "monai")), ("uncertainty", ("torch",))])
def test_importing_the_package_does_not_import_heavy_libraries(name: str, heavy: tuple[str, ...]) -> None:
    code = f"import sys, {name}; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"import {name} imported {result.stdout.strip()}"


# --------------------------------------------------------------------------------------------
# import cycles


def _is_type_checking_block(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (function-level imports included), except those under
    ``if TYPE_CHECKING:``, which never run."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif not (isinstance(node, ast.stmt) and _is_type_checking_block(node)):
            stack.extend(ast.iter_child_nodes(node))


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` (under ``root``) it imports at run time.

    A package is its ``__init__``; ``from pkg import name`` points at ``pkg.name`` when that is a
    module, else at ``pkg``. Importing ``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b`` first,
    but that is not counted as an edge (it would make every package a cycle with its modules).
    """
    files: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            files[".".join(parts)] = path

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in files.items():
        here = module if path.name == "__init__.py" else module.rpartition(".")[0]
        edges: set[str] = set()
        for node in _runtime_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {t for t in (known(a.name) for a in node.names) if t}
                continue
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            for alias in node.names:
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else known(base)
                if target:
                    edges.add(target)
        edges.discard(module)
        graph[module] = edges
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle ``[a, b, ..., a]`` of the graph, or None when it is acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_modules_import_each_other_without_cycles() -> None:
    graph = import_graph(ROOT, PACKAGES)
    assert len(graph) > 50 and graph["pipelines.runner"] >= {"medimg.writers", "pipelines.base"}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import helper\n")
    (pkg / "b.py").write_text("def helper():\n    from pkg import c\n    return c\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n\ndef f():\n    import pkg.a\n"
    )
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.c"}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    # the same back edge under TYPE_CHECKING only never runs: no cycle
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n")
    assert find_cycle(import_graph(tmp_path, ("pkg",))) is None
