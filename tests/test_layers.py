"""The import structure of ``rayssl/``: no import cycles, and no import that runs back up the layers.

Every module under ``rayssl/`` is parsed with :mod:`ast` (nothing is imported, Ray does not start) and each
absolute ``rayssl.`` import becomes an arrow, function-level imports included. Left out: imports under ``if
TYPE_CHECKING:`` (annotations only, never run) and names loaded by ``importlib.import_module`` (the lazy package
faces in ``rayssl/_lazy.py`` and ``pretrain/loop.py``'s model module: strings, not imports). A name taken from a
lazy package face (``from rayssl.pretrain import GenesisCorruption``) is followed to the module its ``_EXPORTS``
names; ``from rayssl.pkg import module`` to that module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS: tuple[tuple[str, ...], ...] = (
    # bottom to top: a module may import its own layer and the layers below it, never one above
    ("rayssl", "rayssl._lazy", "rayssl.logs", "rayssl.storage"),  # the package root holds only __version__
    ("rayssl.config",),  # schemas, loader, recipes, search-space bounds (the whole package)
    ("rayssl.models", "rayssl.viz"),  # networks, weight files and layouts; shared plotting
    ("rayssl.data",),  # sources, reading, preprocessing, crops, pipelines
    ("rayssl.train",),  # the Ray Train runtime: engine, checkpoints, workers, trackers, run directory
    ("rayssl.pretrain", "rayssl.finetune"),  # the two job kinds' drivers, loops and objectives
    ("rayssl.predict", "rayssl.tune"),  # inference on new scans; sweeps and leaderboards
    ("rayssl.export", "rayssl.cli"),  # weight export to other layouts; the command line
)
"""Entries match a module and everything under it (``rayssl.config`` also matches ``rayssl.config.recipes``);
the longest matching entry wins, and ``rayssl`` alone matches only the package root."""


def layer_of(module: str, layers=LAYERS) -> int | None:
    best, index = -1, None
    for i, entries in enumerate(layers):
        for entry in entries:
            hit = module == entry or (entry != "rayssl" and module.startswith(entry + "."))
            if hit and len(entry) > best:
                best, index = len(entry), i
    return index


def module_files(root: Path, package: str = "rayssl") -> dict[str, Path]:
    """``{dotted module name: file}`` of every module of ``package`` under ``root``."""
    out = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """The import statements of a module, at any depth, except those under ``if TYPE_CHECKING:``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _lazy_exports(tree: ast.AST) -> dict[str, str]:
    """A package face's ``_EXPORTS = {name: submodule}`` (see ``rayssl/_lazy.py``), or ``{}``."""
    for node in getattr(tree, "body", []):
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_EXPORTS" for t in node.targets)
                and isinstance(node.value, ast.Dict)):
            try:
                return {str(k): str(v) for k, v in ast.literal_eval(node.value).items()}
            except ValueError:
                return {}
    return {}


def import_graph(root: Path = ROOT, package: str = "rayssl") -> dict[str, dict[str, int]]:
    """``{module: {imported module: line of the first such import}}`` over the modules of ``package``."""
    files = module_files(root, package)
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in files.items()}
    exports = {name: _lazy_exports(tree) for name, tree in trees.items()}
    graph: dict[str, dict[str, int]] = {name: {} for name in files}

    def target(name: str) -> str | None:
        # the module itself, or the closest enclosing module of the tree (``rayssl.x.y`` -> ``rayssl.x``)
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    for name, tree in trees.items():
        is_package = files[name].name == "__init__.py"
        for node in _imports(tree):
            found: list[str] = []
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: resolved against this module's package
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[:len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                if base == "__future__":
                    continue
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    if sub in files:
                        found.append(sub)
                    elif alias.name in exports.get(base, {}):
                        found.append(f"{base}.{exports[base][alias.name]}")
                    else:
                        found.append(base)
            for imported in found:
                if imported.split(".")[0] != package:
                    continue
                resolved = target(imported)
                if resolved and resolved != name:
                    graph[name].setdefault(resolved, node.lineno)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (``[a, b, ..., a]``) per strongly connected group of modules that import each other."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan, iteratively (no recursion limit on deep graphs)
        work = [(v, iter(sorted(graph.get(v, ()))))]
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == node:
                        break
                if len(group) > 1:
                    groups.append(set(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles = []
    for group in groups:  # a path that closes inside the group, for the message
        start = min(group)
        path, seen = [start], {start}
        while True:
            nxt = min(t for t in graph[path[-1]] if t in group)
            if nxt in seen:
                cycles.append(path[path.index(nxt):] + [nxt])
                break
            path.append(nxt)
            seen.add(nxt)
    return cycles


def upward_imports(graph: dict[str, dict[str, int]], layers=LAYERS) -> list[str]:
    """A line per import that runs up the layers (``importer (layer i) -> imported (layer j > i)``)."""
    out = []
    for module, imports in sorted(graph.items()):
        own = layer_of(module, layers)
        for imported, line in sorted(imports.items()):
            theirs = layer_of(imported, layers)
            if own is not None and theirs is not None and theirs > own:
                out.append(f"{module} (layer {own}) imports {imported} (layer {theirs}), line {line}")
    return out


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def graph():
    return import_graph()


def test_every_module_has_a_layer(graph):
    missing = sorted(m for m in graph if layer_of(m) is None)
    assert not missing, f"modules in no layer of LAYERS (tests/test_layers.py): {missing}"


def test_no_import_cycles(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycles between modules:\n  " + "\n  ".join(" -> ".join(c) for c in cycles)


def test_no_import_runs_back_up_the_layers(graph):
    upward = upward_imports(graph)
    assert not upward, ("imports that run back up the layers (tests/test_layers.py LAYERS: a module imports its own "
                        "layer or those below it):\n  " + "\n  ".join(upward))


def test_the_walk_sees_planted_cycles_and_upward_imports(tmp_path):
    """The checks themselves: a function-level upward import and a cycle in a throwaway package are found,
    a TYPE_CHECKING import and a lazy face's name are handled as documented."""
    pkg = tmp_path / "rayssl"
    for sub in ("models", "train", "pretrain"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "pretrain" / "__init__.py").write_text('_EXPORTS = {"Objective": "objective"}\n')
    (pkg / "pretrain" / "objective.py").write_text("from rayssl.train import engine\n")
    (pkg / "models" / "net.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rayssl.pretrain import Objective\n\n"
        "def load():\n    from rayssl.train.engine import build\n")
    (pkg / "train" / "engine.py").write_text("from rayssl.train import checkpoint\n")
    (pkg / "train" / "checkpoint.py").write_text("import rayssl.train.engine\nfrom rayssl.pretrain import Objective\n")
    g = import_graph(tmp_path)
    assert g["rayssl.models.net"] == {"rayssl.train.engine": 6}  # function-level seen, TYPE_CHECKING skipped
    assert "rayssl.pretrain.objective" in g["rayssl.train.checkpoint"]  # through the lazy face
    assert upward_imports(g) == [
        "rayssl.models.net (layer 2) imports rayssl.train.engine (layer 4), line 6",
        "rayssl.train.checkpoint (layer 4) imports rayssl.pretrain.objective (layer 5), line 2",
    ]
    cycles = find_cycles(g)
    assert len(cycles) == 1 and set(cycles[0]) == {"rayssl.train.engine", "rayssl.train.checkpoint",
                                                   "rayssl.pretrain.objective"}
    assert cycles[0][0] == cycles[0][-1]
