"""The export modules form one-way layers (issue 14, item 3): every import of `tiler/exports/*.py`, also those
inside functions, names a module of a lower layer, so that there are no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "tiler" / "exports"
LAYERS = [  # lowest first; a module may import from earlier layers only
    {"chunks", "leases"},
    {"plan"},
    {"workdir"},
    {"destinations", "items"},
    {"request", "store"},
    {"worker", "merge"},
    {"jobs"},
    {"executors"},
    {"service"},
    {"api", "cli"},
]


def exports_imports(path: Path) -> set[str]:
    """The `tiler.exports` modules that `path` imports anywhere (module level, functions, `from . import`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to tiler.exports
                base = "tiler.exports" + (f".{base}" if base else "")
            names = [f"{base}.{alias.name}" if base == "tiler.exports" else base for alias in node.names]
        else:
            continue
        found.update(n.split(".")[2] for n in names if n.startswith("tiler.exports.") and n.count(".") >= 2)
    return found - {path.stem}


def graph() -> dict[str, set[str]]:
    return {path.stem: exports_imports(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}


def test_every_export_module_has_a_layer():
    layered = set().union(*LAYERS)
    assert set(graph()) == layered, f"unlayered: {set(graph()) - layered}, gone: {layered - set(graph())}"


def test_no_module_imports_its_own_or_a_higher_layer():
    level = {module: i for i, layer in enumerate(LAYERS) for module in layer}
    upward = [f"{module} (layer {level[module]}) imports {name} (layer {level[name]})"
              for module, names in graph().items() for name in names if level[name] >= level[module]]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    edges = graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for name in sorted(edges.get(module, ())):
            if state.get(name) == "open":
                return [*path, module, name]
            if name not in state and (cycle := visit(name, [*path, module])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(edges):
        if module not in state:
            cycle = visit(module, [])
            assert cycle is None, " → ".join(cycle)


def test_the_checks_see_imports_inside_functions(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from tiler.exports.merge import run_merge\n    from tiler.exports import worker\n"
                      "    import tiler.exports.store\n")
    assert exports_imports(source) == {"merge", "worker", "store"}
