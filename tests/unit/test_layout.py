"""The package tree is the architecture: layers import only downwards, no cycles, public names stay put."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import yaml

from conftest import REPO

PACKAGE = REPO / "ssl" / "sslvit"
# Lower layers never import higher ones. Rank 0 are the leaf utilities every layer may use.
LAYERS = {
    "errors": 0, "constants": 0, "seeding": 0, "runtime": 0, "distributed": 0, "optim": 0, "outputs": 0, "flops": 0,
    "nn": 1, "data": 2, "checkpoints": 3, "methods": 4, "eval": 5, "viz": 6, "cli": 7,
}  # fmt: skip
PUBLIC = [
    "sslvit.ViTConfig",
    "sslvit.VisionTransformer",
    "sslvit.methods.MAE",
    "sslvit.methods.BEiT",
    "sslvit.methods.CPC",
    "sslvit.eval.OnlineKNN",
    "sslvit.eval.OnlineRankMe",
    "sslvit.viz.ReconstructionLogger",
    "sslvit.data.SSLDataModule",
    "sslvit.checkpoints.load_backbone",
    "sslvit.cli.main",
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path) -> set[str]:
    """sslvit modules imported at module level (not inside functions or ``if TYPE_CHECKING``)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sslvit"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("sslvit"))
    return found


def layer(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "<root>"


MODULES = {module_name(p): top_level_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_known_layer():
    unknown = sorted({layer(m) for m in MODULES} - set(LAYERS) - {"<root>", "__main__"})
    assert not unknown, f"new top-level modules need a place in LAYERS (and the docs' layout): {unknown}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m != "sslvit"))
def test_no_module_imports_a_layer_above_it(module):
    own = LAYERS[layer(module)]
    for imported in MODULES[module]:
        if imported == "sslvit" or layer(imported) == layer(module):
            continue
        assert LAYERS[layer(imported)] < own or (own == 0 and LAYERS[layer(imported)] == 0), (
            f"{module} (layer {layer(module)}) imports {imported} (layer {layer(imported)})"
        )


def test_the_import_graph_has_no_cycles():
    graph = {m: {i for i in imports if i in MODULES and i != m} for m, imports in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_stay_importable(name):
    module, attr = name.rsplit(".", 1)
    assert getattr(importlib.import_module(module), attr) is not None


def class_paths(node):
    if isinstance(node, dict):
        if "class_path" in node:
            yield node["class_path"]
        for value in node.values():
            yield from class_paths(value)
    elif isinstance(node, list):
        for value in node:
            yield from class_paths(value)


@pytest.mark.parametrize("config", sorted(str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml")))
def test_every_class_path_in_the_configs_resolves(config):
    paths = list(class_paths(yaml.safe_load((REPO / config).read_text())))
    assert paths, f"{config} names no class"
    for path in paths:
        module, attr = path.rsplit(".", 1)
        assert getattr(importlib.import_module(module), attr) is not None, path
