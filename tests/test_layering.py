"""lt's import graph: its units import one another in one direction, and never in a circle.

A unit is a top-level module ``lt/x.py`` or package ``lt/x/``; ``lt`` itself (``lt/__init__.py``)
imports them all, so no unit imports it. The units are found on disk, so a new one is checked
as soon as it exists, and :data:`LAYERS` must place it. Imports are read from the source with
``ast`` wherever they sit in a file: an import inside a function runs later but ties the two
units together just the same, so it counts for the layers and for cycles alike.

Layers, lowest first: a unit may import units of its own layer or below, never above (the
one exception, ``nn``'s ``GPT.generate`` forwarder, is checked on its own). Two units that
import each other, directly or round a longer loop, fail whatever their layers.
"""

from __future__ import annotations

import ast
import itertools
import pathlib

import pytest

LT = pathlib.Path(__file__).resolve().parent.parent / "lt"
ROOT = "lt"  # the package itself: lt/__init__.py

LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("imports nothing of lt", frozenset({"threads", "_allocator", "_version", "files", "progress"})),
    ("argument checks and file guards", frozenset({"_checks", "guards"})),
    ("trees and keys", frozenset({"tree", "random"})),
    (
        "leaf kinds, donated trees, text and files",
        frozenset({"quant", "donation", "safetensors_io", "corpus", "tokenizers", "data"}),
    ),
    ("primitives", frozenset({"ops"})),
    ("autodiff", frozenset({"autodiff"})),
    ("components", frozenset({"nn"})),
    ("built on a model", frozenset({"optim", "generate", "checkpoint", "testing", "batch_gradient"})),
    ("parallelism", frozenset({"parallel"})),
    ("training and Hugging Face", frozenset({"training", "ensemble", "hf"})),
    ("fine-tuning adapters", frozenset({"lora"})),
    ("GGUF files", frozenset({"gguf"})),
    ("run directories", frozenset({"runs"})),
    ("serving", frozenset({"serve"})),
    ("the command", frozenset({"cli"})),
    ("python -m lt", frozenset({"__main__"})),
)

# unit -> the units it must never import: every higher layer and lt itself, and a few more
FORBIDDEN: dict[str, set[str]] = {
    unit: {ROOT}.union(*(higher for _, higher in LAYERS[i + 1 :]))
    for i, (_, layer) in enumerate(LAYERS)
    for unit in layer
}
FORBIDDEN["quant"] |= {"random"}  # quantizing is deterministic: no keys
FORBIDDEN["generate"] |= {"nn"}  # the model is an argument; this keeps nn's forwarder acyclic

# (importer, imported) pairs exempt from the layers, each checked by a test of its own
ALLOWED = {("nn", "generate")}


def units(root: pathlib.Path = LT) -> dict[str, list[pathlib.Path]]:
    """Every unit under ``root`` and its Python files: ``x.py`` -> [it], ``x/`` -> all its files."""
    found = {}
    for path in sorted(root.iterdir()):
        if path.is_file() and path.suffix == ".py" and path.name != "__init__.py":
            found[path.stem] = [path]
        elif path.is_dir() and not path.name.startswith((".", "__")) and (files := sorted(path.rglob("*.py"))):
            found[path.name] = files
    return found


def imports(path: pathlib.Path, root: pathlib.Path, names: set[str]) -> list[tuple[str, int]]:
    """``(unit, line)`` for every import of ``root``'s package in the file ``path``.

    ``import lt.x.y`` and ``from lt.x import y`` import unit ``x``; ``from lt import a, b``
    (or ``from . import a, b`` in ``lt/``) imports units ``a`` and ``b``, or ``lt`` itself
    for a name that is no unit (``from lt import GPT``), as does ``import lt``. Relative
    imports are resolved against the file's package.
    """
    top = root.name
    package = [top, *path.relative_to(root).parts[:-1]]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == top:
                    found.append((parts[1] if len(parts) > 1 else ROOT, node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level > len(package):
                    raise ValueError(f"{path}:{node.lineno}: a relative import above {top}/")
                module = package[: len(package) - node.level + 1] + (node.module.split(".") if node.module else [])
            else:
                module = (node.module or "").split(".")
            if module[0] != top:
                continue
            if len(module) > 1:
                found.append((module[1], node.lineno))
            else:
                found += [(a.name if a.name in names else ROOT, node.lineno) for a in node.names]
    return found


def import_graph(root: pathlib.Path = LT) -> tuple[dict[str, set[str]], dict[tuple[str, str], str]]:
    """The units' imports of one another, ``{unit: {imported unit}}`` (``lt`` itself included, as
    ``ROOT``), and where each edge is first seen, ``{(a, b): "a/file.py:line"}``. A unit's imports
    of itself are not edges; an import of a unit that does not exist is kept (a dangling edge)."""
    found = units(root)
    files = dict(found)
    files[ROOT] = [root / "__init__.py"] if (root / "__init__.py").exists() else []
    graph: dict[str, set[str]] = {unit: set() for unit in files}
    where: dict[tuple[str, str], str] = {}
    for unit, paths in files.items():
        for path in paths:
            for target, line in imports(path, root, set(found)):
                if target != unit:
                    graph[unit].add(target)
                    where.setdefault((unit, target), f"{path.relative_to(root.parent)}:{line}")
    return graph, where


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of ``graph`` that has one, as a path that
    starts and ends at the component's smallest node (``["a", "b", "a"]``), shortest first
    from there; sorted. Nodes only named as targets are nodes without edges."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            components.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    cycles = []
    for component in components:
        start = min(component)
        if len(component) == 1 and start not in graph.get(start, ()):
            continue
        paths = [[start]]  # breadth first inside the component: a shortest way back
        seen = {start}
        while True:
            path = paths.pop(0)
            following = sorted(graph.get(path[-1], ()) & component)
            if start in following:
                cycles.append([*path, start])
                break
            for w in following:
                if w not in seen:
                    seen.add(w)
                    paths.append([*path, w])
    return sorted(cycles)


# ------------------------------------------------------------------------------ the checker itself


def test_the_cycle_finder_finds_each_cycle_once_and_nothing_in_an_acyclic_graph():
    layered = {"cli": {"training", "nn"}, "training": {"nn", "ops"}, "nn": {"ops", "tree"}, "ops": {"tree"}}
    assert find_cycles(layered) == []
    assert find_cycles({"a": {"gone"}}) == []  # a dangling edge is no cycle
    assert find_cycles({"training": {"tensor_parallel"}, "tensor_parallel": {"training"}}) == [
        ["tensor_parallel", "training", "tensor_parallel"]
    ]
    tangled = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set(), "x": {"y"}, "y": {"x", "a"}, "s": {"s"}}
    assert find_cycles(tangled) == [["a", "b", "c", "a"], ["s", "s"], ["x", "y", "x"]]
    big_loop = {str(i): {str((i + 1) % 6)} for i in range(6)} | {"0": {"1", "3"}}
    assert find_cycles(big_loop) == [["0", "3", "4", "5", "0"]]  # the shortest way round


def test_imports_are_read_in_every_form_and_anywhere_in_a_file(tmp_path):
    pkg = tmp_path / "lt"
    (pkg / "ops").mkdir(parents=True)
    for name in ("__init__.py", "tree.py", "random.py", "nn.py", "ops/__init__.py"):
        (pkg / name).write_text("")
    (pkg / "ops" / "basic.py").write_text(
        "import numpy as np\n"
        "from .. import tree, random as r\n"  # lt.tree, lt.random
        "from . import primitive\n"  # lt.ops.primitive: its own unit
        "from ..nn import Linear\n"  # lt.nn
        "import lt.cli.common\n"  # lt.cli: a unit that does not exist yet
        "from lt import GPT\n"  # no unit: lt itself
        "def later():\n"
        "    from lt.training import train\n"  # a call-time import counts
        "    import lt\n"
    )
    (pkg / "nn.py").write_text("from .ops import basic\nfrom . import ops\n")
    found = {(t, line) for t, line in imports(pkg / "ops" / "basic.py", pkg, set(units(pkg)))}
    assert found == {
        ("tree", 2),
        ("random", 2),
        ("ops", 3),
        ("nn", 4),
        ("cli", 5),
        (ROOT, 6),
        ("training", 8),
        (ROOT, 9),
    }
    graph, where = import_graph(pkg)
    assert graph["ops"] == {"tree", "random", "nn", "cli", ROOT, "training"}  # not itself
    assert graph["nn"] == {"ops"} and graph["tree"] == set()
    assert where["ops", "training"] == "lt/ops/basic.py:8"
    assert find_cycles(graph) == [["nn", "ops", "nn"]]


# ------------------------------------------------------------------------------ lt


def _named(unit: str) -> str:
    if unit == ROOT:
        return "lt itself (a name from lt/__init__.py, or a unit lt/ no longer has)"
    return unit


def test_every_unit_is_in_the_layering_table():
    placed = [unit for _, layer in LAYERS for unit in layer]
    assert len(placed) == len(set(placed)), "a unit sits in two layers"
    on_disk = set(units())
    assert not on_disk - set(placed), (
        f"{sorted(on_disk - set(placed))}: place each in LAYERS (tests/test_layering.py), in the lowest "
        "layer above everything it imports"
    )
    assert not set(placed) - on_disk, f"LAYERS names {sorted(set(placed) - on_disk)}, which lt/ no longer has"


@pytest.mark.parametrize("unit", sorted(FORBIDDEN))
def test_a_unit_never_imports_a_higher_layer(unit):
    graph, where = import_graph()
    bad = sorted((graph.get(unit, set()) & FORBIDDEN[unit]) - {b for a, b in ALLOWED if a == unit})
    assert not bad, "; ".join(f"{where[unit, b]} imports {_named(b)}, which {unit} must not import" for b in bad)


def test_the_only_import_from_nn_to_generate_is_the_generate_forwarder():
    """``GPT.generate`` imports ``lt.generate`` when called: allowed, since generate never imports nn."""
    found = units()
    uses = [
        (p.relative_to(LT).as_posix(), line)
        for p in found["nn"]
        for target, line in imports(p, LT, set(found))
        if target == "generate"
    ]
    assert [p for p, _ in uses] == ["nn/gpt.py"]
    lines = (LT / "nn" / "gpt.py").read_text().splitlines()
    forwarder = max(i for i, text in enumerate(lines[: uses[0][1]]) if text.strip().startswith("def "))
    assert lines[forwarder].strip().startswith("def generate("), f"nn/gpt.py:{uses[0][1]} is not in GPT.generate"
    assert "nn" not in import_graph()[0]["generate"]


def test_no_unit_imports_another_that_imports_it_back():
    graph, where = import_graph()
    cycles = find_cycles(graph)
    described = [
        " -> ".join(cycle) + " (" + ", ".join(f"{where[a, b]} imports {b}" for a, b in itertools.pairwise(cycle)) + ")"
        for cycle in cycles
    ]
    assert not cycles, "import cycles between lt's units: " + "; ".join(described)
