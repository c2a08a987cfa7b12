"""The notebooks in colab/: each runs top to bottom in a real Jupyter kernel (quick settings
injected after its `parameters` cell, papermill's convention), draws what it promises, is
committed without outputs, and installs from the one repository URL in pyproject.toml."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import sys
import time

import nbformat
import pytest
import tomllib
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

ROOT = pathlib.Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "colab").glob("*.ipynb"))
REPOSITORY = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]

# Tiny CPU settings per notebook, injected after its `parameters` cell. Every notebook also
# gets `quick = True`, so one without an entry here (a new notebook) still runs its quick path.
QUICK = {
    "01_generate": dict(
        model="demo",
        prompt="a red circle | blue:-0.3",
        patches="shapes",
        population=2,
        steps=10,
        canvas=32,
        num_patches=8,
        num_crops=1,
        output_size=64,
    ),
    "02_patch_maker": dict(
        source="photos",
        max_patches=24,
        max_source_side=160,
        prompt="a red circle",
        model="demo",
        population=2,
        steps=10,
        canvas=32,
        num_patches=8,
        num_crops=1,
        output_size=64,
    ),
    "03_composition": dict(
        model="demo",
        patches="shapes",
        population=2,
        steps=10,
        canvas=32,
        tile_canvas=32,
        num_patches=8,
        num_crops=1,
        output_size=96,
        tiles="2x1",
        tile_prompts="sun | trees",
    ),
    "04_population_search": dict(
        model="demo",
        cpu_devices=8,
        collages_per_device=1,
        steps=8,
        evolution_every=4,
        canvas=32,
        num_patches=8,
        num_crops=1,
        output_size=64,
        batch_prompts=["a red circle", "a blue square"],
    ),
    "05_studio": dict(
        model="demo",
        prompt="a red circle",
        patches="shapes",
        population=2,
        steps=8,
        canvas=32,
        num_patches=4,
        num_crops=1,
        chunk_steps=2,
        output_size=32,
    ),
}

# What each notebook must show: MIME types and text among its outputs.
SHOWN = {
    "01_generate": ["image/png", "data:image/gif;base64,", "zip: "],
    "02_patch_maker": ["image/png", "wrote ", "patches in the library"],
    "03_composition": ["image/png", "blended: "],
    "04_population_search": ["image/png", "8 CPU device(s)", "population 8 over 8 devices"],
    "05_studio": ["text/html", "<iframe", "image/png", "studio at http://127.0.0.1:", "wrote "],
}

# Nothing in quick mode may need the network: the hub and datasets are told to stay offline,
# and any HTTP(S) request goes to a closed local port and fails at once.
OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "ALL_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "",
}


def _read(path: pathlib.Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def _parameters_index(notebook) -> int:
    tagged = [
        i
        for i, cell in enumerate(notebook.cells)
        if "parameters" in cell.get("metadata", {}).get("tags", [])
    ]
    assert len(tagged) == 1, "a notebook needs exactly one cell tagged `parameters`"
    return tagged[0]


@pytest.fixture(scope="module")
def kernel_spec_dir(tmp_path_factory):
    """A kernelspec that starts this test's own interpreter: the venv CI made, whatever
    other `python3` kernels the machine has registered."""
    folder = tmp_path_factory.mktemp("kernels") / "clipclop-test"
    folder.mkdir()
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "clipclop-jax tests",
        "language": "python",
    }
    (folder / "kernel.json").write_text(json.dumps(spec))
    return folder.parent


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
    # Shared by the notebooks of one test run: a program two notebooks both compile (the same
    # sizes and CLIP) is compiled once. Nothing outlives the run.
    return tmp_path_factory.mktemp("jax-cache")


def _outputs(notebook) -> str:
    """Every output's MIME types and text, as one string to search."""
    parts = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            parts.append(output.get("text", ""))
            for mime, data in output.get("data", {}).items():
                parts.append(mime)
                if mime in ("text/plain", "text/html"):
                    parts.append(data if isinstance(data, str) else "".join(data))
    return "\n".join(parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_a_kernel(path, tmp_path, monkeypatch, kernel_spec_dir, compilation_cache):
    notebook = _read(path)
    index = _parameters_index(notebook)
    quick = {"quick": True, **QUICK.get(path.stem, {})}
    injected = nbformat.v4.new_code_cell(
        "\n".join(f"{name} = {value!r}" for name, value in quick.items())
    )
    injected.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(index + 1, injected)
    # Which interpreter the kernel runs: it must be this environment's.
    # and the kernel's CPU seconds (which the machine's other load barely moves), for the log.
    notebook.cells.append(
        nbformat.v4.new_code_cell(
            "import resource, sys\nprint('python:', sys.executable)\n"
            "usage = resource.getrusage(resource.RUSAGE_SELF)\n"
            "print(f'cpu: {usage.ru_utime + usage.ru_stime:.1f} s')"
        )
    )

    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(compilation_cache))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    # `!clipclop ...` in a notebook finds this environment's command first.
    monkeypatch.setenv("PATH", f"{pathlib.Path(sys.executable).parent}:{_env('PATH')}")
    if pythonpath := _env("PYTHONPATH"):
        # A relative PYTHONPATH (a checkout under test) must hold in the notebook's folder.
        absolute = ":".join(str(pathlib.Path(p).resolve()) for p in pythonpath.split(":"))
        monkeypatch.setenv("PYTHONPATH", absolute)
    manager = KernelManager(
        kernel_name="clipclop-test",
        kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_spec_dir)]),
    )
    client = NotebookClient(
        notebook, km=manager, timeout=300, resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.perf_counter()
    client.execute()
    cpu = re.search(r"cpu: (\S+ s)", _outputs(notebook))
    print(
        f"{path.name}: {time.perf_counter() - start:.1f} s in the kernel "
        f"({cpu and cpu.group(1)} of CPU); cells:",
        _timings(notebook),
    )

    shown = _outputs(notebook)
    assert "Traceback" not in shown
    for expected in SHOWN.get(path.stem, ["image/png"]):
        assert expected in shown, f"{path.name} showed no {expected!r}"
    assert f"python: {sys.executable}" in shown


def _timings(notebook) -> str:
    """Each code cell's seconds, from nbclient's timing metadata (for the log)."""
    seconds = []
    for cell in notebook.cells:
        timing = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            begin, end = (
                datetime.datetime.fromisoformat(timing[key].replace("Z", "+00:00"))
                for key in ("iopub.execute_input", "shell.execute_reply")
            )
            seconds.append(f"{(end - begin).total_seconds():.1f}")
    return " ".join(seconds)


def _env(name: str) -> str:
    return os.environ.get(name, "")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    notebook = _read(path)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: a cell has outputs; clear them"
            assert cell.execution_count is None, f"{path.name}: a cell has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_opens_with_colab_link_install_runtime_and_parameters(path):
    notebook = _read(path)
    slug = REPOSITORY.removeprefix("https://github.com/")
    link = f"https://colab.research.google.com/github/{slug}/blob/main/colab/{path.name}"
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and f"]({link})" in first.source
    code = [cell.source for cell in notebook.cells if cell.cell_type == "code"]
    install = code[0]
    assert f'REPOSITORY = "{REPOSITORY}"' in install
    assert "git+{REPOSITORY}" in install and 'find_spec("clipclop_jax") is None' in install
    # Colab's own jax (CUDA or TPU build) is pinned, never replaced.
    assert 'for name in ("jax", "jaxlib")' in install and "*pins" in install
    assert any("jax.devices()" in source and "Change runtime type" in source for source in code)
    _parameters_index(notebook)
    # Every link into GitHub points at the one repository.
    text = "\n".join(cell.source for cell in notebook.cells)
    for url in re.findall(
        r"https://(?:colab\.research\.google\.com/github|github\.com)/[^\s)\"']+", text
    ):
        assert slug in url, f"{path.name} links {url}, not {REPOSITORY}"


def test_readme_links_every_notebook_at_the_repository():
    readme = (ROOT / "README.md").read_text()
    slug = REPOSITORY.removeprefix("https://github.com/")
    for path in NOTEBOOKS:
        assert f"(colab/{path.name})" in readme, f"README does not link {path.name}"
        colab = f"https://colab.research.google.com/github/{slug}/blob/main/colab/{path.name}"
        assert colab in readme, f"README has no Colab link for {path.name}"
    for url in re.findall(
        r"https://(?:colab\.research\.google\.com/github|github\.com)/[^\s)]+", readme
    ):
        assert slug in url, f"README links {url}, not {REPOSITORY}"
