"""Imports inside the package flow one way (docs/architecture.md): the import-linter
contracts in pyproject.toml hold for the package as it is, and they catch an import that
points upstream or a module that no contract places."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

# The checkout: its pyproject.toml holds the contracts, and they are checked on its source
# (the installed package, in site-packages, has no pyproject.toml beside it).
ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "clipclop_jax"


def lint_imports(root: pathlib.Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with ``root``'s pyproject.toml, on the package under ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    script = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"
    command = [sys.executable, "-c", script, "--no-cache"]
    return subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=120)


def copy_of_the_package(tmp_path: pathlib.Path) -> pathlib.Path:
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(PACKAGE, tmp_path / "clipclop_jax", ignore=shutil.ignore_patterns("assets"))
    return tmp_path


def test_the_packages_keep_their_layers():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upstream_import_breaks_the_contract(tmp_path):
    root = copy_of_the_package(tmp_path)
    render = root / "clipclop_jax" / "collage" / "render.py"
    render.write_text(render.read_text() + "\nfrom clipclop_jax.runs import settings  # noqa\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "clipclop_jax.collage.render -> clipclop_jax.runs.settings" in result.stdout


def test_a_module_no_contract_places_breaks_it(tmp_path):
    root = copy_of_the_package(tmp_path)
    (root / "clipclop_jax" / "runs" / "stray.py").write_text('"""Placed in no layer."""\n')
    result = lint_imports(root)
    assert result.returncode != 0
    assert "stray" in result.stdout
