"""Imports inside the package flow one way: from settings, through rendering, to the API."""

import ast
import pathlib

import clipclop_jax

# Upstream first. A module may import only modules listed before it.
LAYERS = [
    "version",
    "config",
    "xla_options",
    "io",
    "safe_npy",
    "cutouts",
    "segment",
    "builtin_libraries",
    "library",
    "patch_sources",
    "contact_sheet",
    "patch_maker",
    "params",
    "transforms",
    "background",
    "render",
    "hires",
    "tiles",
    "poisson",
    "blend",
    "augment",
    "demo_data",
    "converted_weights",
    "perceptor",
    "prompts",
    "evolution",
    "objective",
    "optimise",
    "sharding",
    "interrupt",
    "config_files",
    "video",
    "checkpoint",
    "preflight",
    "api",
    "tiled",
    "batch",
    "cli_patches",
    "cli_options",
    "cli_batch",
    "cli",
    "__init__",
    "__main__",
]

PACKAGE = pathlib.Path(clipclop_jax.__file__).parent


def package_imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "clipclop_jax":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("clipclop_jax."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("clipclop_jax."):
                    found.add(alias.name.split(".")[1])
    return found


def test_every_module_has_a_layer():
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    missing = modules - set(LAYERS)
    assert not missing, f"add {sorted(missing)} to LAYERS in tests/test_layering.py"


def test_imports_point_upstream():
    rank = {name: i for i, name in enumerate(LAYERS)}
    wrong = []
    for path in PACKAGE.glob("*.py"):
        for imported in package_imports(path):
            if imported in rank and rank[imported] >= rank[path.stem]:
                wrong.append(f"{path.stem} imports {imported}")
    assert not wrong, wrong
