"""The shape of the package, from its import graph (ast, no import): no circles, no import that runs upward, and only
``integration/`` imports verl."""

from __future__ import annotations

import ast
from pathlib import Path

import ranktuner_verl

PACKAGE = Path(ranktuner_verl.__file__).parent
#: top-level room -> layer: a room imports only rooms of a lower layer.
LAYERS = {
    "stats": 0, "methods": 1, "weighted_nll": 2, "checkpoints": 3, "data": 3, "moved": 3,
    "integration": 4, "eval": 4, "diagnostics": 4, "bench": 5, "quickstart": 5,
}
#: the rooms of integration/: the plugin layer (its top-level modules) below sft/ and rl/, which stay apart.
#: plugin.py, the entry point, installs everything (rl's losses included) and the trainers import it for that.
ENTRY_POINT = "ranktuner_verl.integration.plugin"


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(name: str, path: Path, modules) -> tuple[set[str], set[str]]:
    """(modules of this package, top-level names of other packages) that ``name`` imports, anywhere in its code."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets, external = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)
    ours = set()
    for target in targets:
        if not target.startswith("ranktuner_verl"):
            external.add(target.split(".")[0])
            continue
        while target not in modules:
            target = target.rpartition(".")[0]
        if target not in (name, "ranktuner_verl"):
            ours.add(target)
    return ours, external


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    modules = _modules()
    graph, external = {}, {}
    for name, path in modules.items():
        graph[name], external[name] = _imported(name, path, modules)
    return graph, external


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def room(module: str) -> str:
    """The top-level module or folder ``module`` lives in (the package's own ``__init__``: "")."""
    return module.split(".")[1] if "." in module else ""


def test_no_import_circles():
    assert circles(import_graph()[0]) == []


def test_circles_are_found():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_room_has_a_layer_and_imports_only_lower_ones():
    graph, _ = import_graph()
    rooms = {room(m) for m in graph} - {""}
    assert rooms == set(LAYERS), "give a new top-level module or folder its layer in LAYERS"
    upward = sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets
                    if room(a) and room(a) != room(b) and LAYERS[room(b)] >= LAYERS[room(a)])
    assert upward == []


def test_integration_rooms_plugin_layer_below_sft_and_rl():
    graph, _ = import_graph()
    wrong = []
    for a, targets in graph.items():
        if not a.startswith("ranktuner_verl.integration.") or a == ENTRY_POINT:
            continue
        a_room = a.split(".")[2] if a.count(".") > 2 else "plugin layer"
        for b in targets:
            if not b.startswith("ranktuner_verl.integration.") or b == ENTRY_POINT:
                continue
            b_room = b.split(".")[2] if b.count(".") > 2 else "plugin layer"
            if b_room != a_room and b_room != "plugin layer":
                wrong.append(f"{a} -> {b}")
    assert wrong == []


def test_only_integration_imports_verl():
    _, external = import_graph()
    assert sorted(m for m, names in external.items() if "verl" in names and room(m) != "integration") == []
    assert any("verl" in names for m, names in external.items() if room(m) == "integration")


def test_an_old_module_path_fails_naming_the_new_one():
    import subprocess
    import sys

    from ranktuner_verl.moved import MOVED

    done = subprocess.run([sys.executable, "-m", "ranktuner_verl.integration.trainer", "--help"],
                          capture_output=True, text=True)
    assert done.returncode != 0 and "ranktuner_verl.integration.sft.trainer" in done.stderr
    for old, new in MOVED.items():
        assert old not in _modules() and new in _modules(), (old, new)
