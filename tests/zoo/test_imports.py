"""No import cycle anywhere in ``zoo/``, function-level imports included (STYLE.md: a cycle hidden
by an import inside a function is still a cycle: ``training`` and ``pretrained`` once had one).

The graph is read from the source with ``ast``: an edge A -> B for every ``import``
in A that names module B of the ``zoo`` package, wherever the statement sits, except
under ``if TYPE_CHECKING:`` (never executed). ``from zoo import x`` names module
``zoo.x`` when it is one, else the package ``zoo``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import zoo

ROOT = Path(zoo.__file__).parent


def module_names(root: Path, package: str) -> dict[str, Path]:
    """``{"zoo.training.loop": path}`` for every module under ``root`` (packages by their ``__init__``)."""
    names = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        names[".".join((package, *parts))] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(path: Path, name: str, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that the file ``path`` (module ``name``) imports anywhere."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    resolved = set()
    for target in found:  # "zoo.data.loader.ArrayLoader"-like names fall back to their longest module prefix
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            resolved.add(target)
    return resolved


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    modules = module_names(root, package)
    return {name: imported(path, name, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as ``[a, b, ..., a]``, or None (depth-first search with colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_zoo_has_no_import_cycle():
    graph = import_graph(ROOT, "zoo")
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_graph_sees_function_level_imports():
    """The edges the cycle check relies on are really read (a function-level one included)."""
    graph = import_graph(ROOT, "zoo")
    assert "zoo.pretrained" in graph["zoo.training.loop"]  # --init-from: the loop uses the pretrained side
    assert "zoo.training" not in graph["zoo.pretrained"] and "zoo.training.model_def" not in graph["zoo.pretrained"]
    assert "zoo.data" in graph["zoo.training.run"]  # imported inside Run.data


@pytest.mark.parametrize(
    "files,cycle",
    [
        ({"a.py": "def f():\n    from pkg import b\n", "b.py": "import pkg.a\n"}, True),
        ({"a.py": "from . import b\n", "b.py": "from .c import x\n", "c.py": "from pkg.a import y\n"}, True),
        ({"a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\n", "b.py": "import pkg.a\n"}, False),
        ({"a.py": "import pkg.b\n", "b.py": "import os\n"}, False),
    ],
)
def test_the_detector_finds_cycles_and_only_cycles(tmp_path, files, cycle):
    for name, text in {"__init__.py": "", **files}.items():
        (tmp_path / name).write_text(text)
    assert (find_cycle(import_graph(tmp_path, "pkg")) is not None) is cycle
