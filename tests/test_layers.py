"""The library's layers (README *Layout*): core → research → apps, imports only downward, no import
cycles between packages, and a TorchServe worker that imports the core alone.

Every import statement counts, those inside functions too (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "sane"

# Each top-level module or package of sane/ and its layer; a new one must be placed here.
LAYERS = {
    "core": {"errors", "images", "heatmap", "substrate", "models", "saliency", "explain"},
    "research": {"data", "metrics", "evaluation", "train", "pipeline", "study"},
    "apps": {"cli", "serving"},
}
RANK = {"core": 0, "research": 1, "apps": 2}
LAYER_OF = {unit: layer for layer, units in LAYERS.items() for unit in units}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every ``sane`` module a file imports, at any depth of the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            else:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}  # `from sane.serving import ops`
    return {name for name in found if name == "sane" or name.startswith("sane.")}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _unit(module: str) -> str | None:
    """The top-level unit (``models``, ``serving``, ...) of a module; None for the ``sane`` package itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def _layer(module: str) -> str:
    unit = _unit(module)
    if unit is None or not ((PACKAGE / unit).is_dir() or (PACKAGE / f"{unit}.py").is_file()):
        return "core"  # `sane` itself or a name it defines (the version string)
    assert unit in LAYER_OF, f"sane.{unit} has no layer: place it in LAYERS (and the README's Layout)"
    return LAYER_OF[unit]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``importer -> imported`` lines where a module imports a layer above its own."""
    return sorted(
        f"{module} ({_layer(module)}) -> {name} ({_layer(name)})"
        for module, names in graph.items()
        for name in names
        if RANK[_layer(name)] > RANK[_layer(module)]
    )


def _package_of(module: str) -> str | None:
    """The package a module belongs to, for the cycle check: ``sane.X``, or ``sane.serving.worker`` /
    ``sane.serving.ops`` (serving's two parts count apart)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    if parts[1] == "serving" and len(parts) > 2 and parts[2] in ("worker", "ops"):
        return ".".join(parts[:3])
    return ".".join(parts[:2])


def package_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one package in the package import graph."""
    edges: dict[str, set[str]] = defaultdict(set)
    for module, names in graph.items():
        src = _package_of(module)
        for name in names:
            dst = _package_of(name)
            if src and dst and src != dst and dst != "sane.serving":  # serving's __init__ re-exports worker
                edges[src].add(dst)
    index, low, stack, on, groups, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return groups


def test_every_unit_of_the_package_has_a_layer():
    units = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"} | {
        p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert units == set(LAYER_OF)


def test_imports_only_go_down_the_layers():
    assert layer_violations(_graph()) == []


def test_no_import_cycles_between_packages():
    assert package_cycles(_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    """The checks themselves: an upward import and a two-package cycle are reported."""
    graph = {"sane.explain.ranker": {"sane.data.synthetic"}, "sane.data.synthetic": {"sane.images"},
             "sane.train.pipeline": {"sane.evaluation.prior"}, "sane.evaluation.prior": {"sane.train.split"}}
    assert layer_violations(graph) == ["sane.explain.ranker (core) -> sane.data.synthetic (research)"]
    assert package_cycles(graph) == [["sane.evaluation", "sane.train"]]


def test_the_worker_imports_the_core_only_statically():
    worker = {m: names for m, names in _graph().items() if m.startswith("sane.serving.worker")}
    assert worker
    allowed = ("sane.serving.worker", "sane.serving")
    outside = sorted(f"{m} -> {n}" for m, names in worker.items() for n in names
                     if _layer(n) != "core" and not n.startswith(allowed))
    assert outside == []


WORKER_PROBE = r"""
import importlib.util, json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
for path in sorted(Path(sys.argv[1], "handlers").glob("*_handler.py")):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps(sorted(m for m in sys.modules if m == "sane" or m.startswith("sane."))))
"""


@pytest.mark.slow
def test_a_worker_loading_every_handler_holds_no_training_or_data_set_module():
    """What a TorchServe worker imports when it loads the handler files (as ``ts`` does)."""
    out = subprocess.run([sys.executable, "-c", WORKER_PROBE, str(ROOT)], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    modules = json.loads(out)
    assert "sane.serving.worker.sane_archive" in modules and "sane.saliency.rise" in modules
    above = [m for m in modules if m != "sane.serving" and not m.startswith("sane.serving.worker")
             and _unit(m) is not None and _layer(m) != "core"]
    assert above == []
