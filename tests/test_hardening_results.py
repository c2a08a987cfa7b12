"""A run's result is what it claims to be: scored, drawn on its own background, saved before
anything can go wrong at the end, and refused early when it cannot work."""

from __future__ import annotations

import dataclasses
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from clipclop_jax import (
    CollageConfig,
    GenerateConfig,
    OptimConfig,
    OutputConfig,
    Resources,
    generate,
    load_collage,
    load_library,
    load_perceptor,
)
from clipclop_jax.cli.main import main
from clipclop_jax.collage.background import make_background
from clipclop_jax.collage.params import random_population, take
from clipclop_jax.guidance.prompts import PromptError
from clipclop_jax.runs import checkpoint, preflight, run_folder
from clipclop_jax.runs.batch import generate_batch
from clipclop_jax.runs.generate import resume
from clipclop_jax.runs.interrupt import FinalRenderError
from clipclop_jax.runs.outputs import final_image
from clipclop_jax.runs.reblend import blend_run
from clipclop_jax.runs.setup import plain_losses, prepare_run
from clipclop_jax.runs.tiled import generate_tiled
from clipclop_jax.search.evolution import EvolutionConfig

TINY = GenerateConfig(
    prompt="a red circle",
    population=2,
    output_size=64,
    lowres_size=32,
    highres_size=32,
    collage=CollageConfig(canvas_height=32, canvas_width=32, num_patches=8),
    optim=OptimConfig(steps=2, chunk_steps=2, num_crops=1),
    evolution=EvolutionConfig(method="none"),
)


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    cache = tmp_path_factory.mktemp("library-cache")
    library = load_library("shapes", lowres_size=32, highres_size=32, cache_dir=cache)
    return Resources(load_perceptor("demo"), library)


@pytest.fixture
def no_model(monkeypatch):
    """Fails the test if anything tries to load CLIP."""

    def refuse(name):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr("clipclop_jax.runs.resources.load_guides", refuse)


# --- item 4: a written collage is always scored -------------------------------------------


def test_float32_overflowing_weights_are_refused_before_the_model_loads(no_model, tmp_path):
    out = tmp_path / "run"
    bad = dataclasses.replace(TINY, prompt="a:1e308 | b:-1e308")
    with pytest.raises(PromptError, match=r"^prompt 1 'a:1e308' has weight 1e\+308"):
        generate(bad, out_dir=out)
    assert not out.exists()


def test_a_zero_step_run_writes_a_scored_collage(resources, tmp_path):
    config = dataclasses.replace(TINY, optim=dataclasses.replace(TINY.optim, steps=0))
    result = generate(config, out_dir=tmp_path / "run", resources=resources)
    assert np.isfinite(result.loss) and result.history.shape == (0, 2)
    # The loss is the plain-render loss of the saved collage, recomputed independently.
    run = prepare_run(config, resources)
    expected = plain_losses(
        config,
        resources.perceptor,
        run.guidance,
        jax.tree.map(lambda a: np.asarray(a)[None], result.collage),
    )
    np.testing.assert_allclose(result.loss, expected[0], rtol=1e-5)
    saved, _ = load_collage(tmp_path / "run" / run_folder.PARAMS_FILE)
    with np.load(tmp_path / "run" / run_folder.PARAMS_FILE) as data:
        assert float(data["loss"]) == pytest.approx(result.loss)
    np.testing.assert_array_equal(saved.patch_index, result.collage.patch_index)
    assert (tmp_path / "run" / run_folder.COLLAGE_FILE).is_file()


def test_a_run_whose_every_loss_is_nan_ends_in_an_error(resources, tmp_path):
    nan_background = np.full((32, 32, 3), np.nan, np.float32)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="every loss of this run was NaN or infinite"):
        generate(TINY, out_dir=out, resources=resources, canvas_background=nan_background)
    assert not (out / run_folder.COLLAGE_FILE).exists()
    assert not (out / run_folder.PARAMS_FILE).exists()


# --- item 5: the saved picture's background is the optimised one --------------------------


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def off_canvas(collage):
    far = jnp.full_like(collage.params.translation, 50.0)
    return collage._replace(params=collage.params._replace(translation=far))


@pytest.mark.parametrize("output_size", [128, 100])
def test_the_final_noise_background_is_the_optimised_one(resources, output_size):
    config = dataclasses.replace(TINY, background="noise", output_size=output_size)
    run = prepare_run(config, resources)
    collage = take(random_population(jax.random.key(0), config.collage, 8, 1), 0)
    # Patches off the canvas: the final image is its background alone.
    image = final_image(config, resources.library, off_canvas(collage), run.background_key)
    assert image.shape == (output_size, output_size, 3)
    small = np.asarray(Image.fromarray(np.uint8(image * 255)).resize((32, 32), Image.BOX)) / 255
    assert correlation(small, np.asarray(run.background)) > 0.95
    # And not by chance: another seed's field is unrelated.
    other = make_background("noise", 32, 32, key=jax.random.key(99))
    assert abs(correlation(small, np.asarray(other))) < 0.2


def test_an_image_background_still_matches_at_the_output_size(resources, tmp_path):
    y, x = np.mgrid[0:90, 0:120] / 90.0
    picture = np.stack([np.sin(3 * x), np.cos(4 * y), x * y], -1) * 0.5 + 0.5
    path = tmp_path / "bg.png"
    Image.fromarray(np.uint8(picture * 255)).save(path)
    config = dataclasses.replace(TINY, background=str(path), output_size=128)
    run = prepare_run(config, resources)
    collage = take(random_population(jax.random.key(0), config.collage, 8, 1), 0)
    image = final_image(config, resources.library, off_canvas(collage), run.background_key)
    small = image.reshape(32, 4, 32, 4, 3).mean((1, 3))
    assert correlation(small, np.asarray(run.background)) > 0.95


# --- item 12: memory is checked first, and the final render cannot lose the run ------------


@pytest.mark.parametrize(
    ("change", "stage"),
    [
        (dict(output_size=32768), "the final render"),
        (dict(collage=CollageConfig(canvas_height=16384, canvas_width=16384)), "optimising"),
    ],
)
def test_sizes_the_machine_cannot_hold_are_refused_first(
    no_model, tmp_path, monkeypatch, change, stage
):
    # A machine of 24 GiB, as the CPU machine these tests were written on.
    monkeypatch.setattr(preflight, "available_memory", lambda: (24 * 2**30, None))
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=rf"^{stage} needs about .* GiB of .* free: lower"):
        generate(dataclasses.replace(TINY, **change), out_dir=out)
    assert not out.exists()


def test_the_machine_says_how_much_memory_it_has():
    host, device = preflight.available_memory()
    assert host is not None and 0 < host <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert device is None or device > 0


def test_the_memory_check_uses_what_the_machine_has(monkeypatch):
    need = preflight.estimate_memory(TINY)
    assert need.optimise > 32 * 32 * 100 and need.render_host >= 64 * 64 * 3
    monkeypatch.setattr(preflight, "available_memory", lambda: (need.optimise - 1, None))
    with pytest.raises(ValueError, match="optimising needs about"):
        preflight.check_memory(TINY)
    monkeypatch.setattr(preflight, "available_memory", lambda: (10**12, 10**12))
    preflight.check_memory(TINY)


@pytest.fixture(scope="module")
def finished_run(resources, tmp_path_factory):
    """A finished run folder whose config asks for a GIF."""
    out = tmp_path_factory.mktemp("finished") / "run"
    generate(
        dataclasses.replace(TINY, output=OutputConfig(gif=True)), out_dir=out, resources=resources
    )
    return out


def _small_machine(monkeypatch):
    need = preflight.estimate_memory(TINY)
    monkeypatch.setattr(preflight, "available_memory", lambda: (need.optimise - 1, None))


def _no_gif_writer(monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio", None)


def _full_disk(monkeypatch):
    usage = run_folder.shutil.disk_usage("/")
    monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda path: usage._replace(free=0))


@pytest.mark.parametrize(
    ("machine", "message"),
    [
        (_small_machine, r"^optimising needs about .* GiB of memory but this machine has"),
        (_no_gif_writer, r"^GIF and MP4 output need imageio"),
        (_full_disk, r"has 0\.0 MiB free but this run needs"),
    ],
)
def test_resume_checks_this_machine_before_the_model_loads(
    finished_run, no_model, monkeypatch, machine, message
):
    before = sorted(p.name for p in finished_run.rglob("*"))
    machine(monkeypatch)
    with pytest.raises(ValueError, match=message):
        resume(finished_run)
    assert sorted(p.name for p in finished_run.rglob("*")) == before


def test_a_tiled_run_too_big_to_assemble_is_refused_first(no_model, tmp_path, monkeypatch):
    # Each 4096 x 4096 tile fits in 4 GiB; the 3 x 2 assembly (about 6.6 GiB) does not.
    monkeypatch.setattr(preflight, "available_memory", lambda: (4 * 2**30, None))
    config = dataclasses.replace(TINY, tiles="3x2", output_size=4096)
    preflight.check_memory(dataclasses.replace(config, tiles=None))
    out = tmp_path / "run"
    with pytest.raises(
        ValueError,
        match=r"^the final render needs about 6\.\d GiB .* lower --output-size or --tiles",
    ):
        generate_tiled(config, out_dir=out)
    assert not out.exists()


def test_a_failed_final_render_leaves_params_and_checkpoint(resources, tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise MemoryError("RESOURCE_EXHAUSTED: out of memory allocating 47 GiB")

    monkeypatch.setattr("clipclop_jax.runs.run_files.final_image", out_of_memory)
    out = tmp_path / "run"
    with pytest.raises(FinalRenderError, match=r"final render at 64x64 failed \(MemoryError"):
        generate(TINY, out_dir=out, resources=resources)
    collage, _ = load_collage(out / run_folder.PARAMS_FILE)
    saved = checkpoint.load_latest(out)
    assert saved.step == TINY.optim.steps
    assert not (out / run_folder.COLLAGE_FILE).exists()
    monkeypatch.undo()
    # What was saved renders the collage: blend_run re-renders from params.npz.
    assert os.path.isfile(blend_run(out, "poisson", resources=resources))


def test_the_cli_reports_a_failed_final_render_in_one_line(tmp_path, monkeypatch, capsys):
    def out_of_memory(*args, **kwargs):
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory\nmore detail")

    monkeypatch.setattr("clipclop_jax.runs.run_files.final_image", out_of_memory)
    out = tmp_path / "run"
    argv = ["generate", "a red circle", "--out", str(out), "--quiet", "--steps", "1"]
    argv += ["--size", "32", "--output-size", "32", "--population", "1", "--num-patches", "4"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is safe in" in err and "params.npz" in err
    assert (out / run_folder.PARAMS_FILE).is_file()


# --- item 13: what can be checked is checked before the model loads -------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(patches="/no/such/library.npz"), "does not exist"),
        (dict(patches=__file__), "is a file but not a .npz or .npy library"),
        (dict(background="plaid"), "is not a colour"),
        (dict(region_prompts="sky | sun:inf"), r"region row 1, column 2: prompt 1 'sun:inf'"),
    ],
)
def test_bad_settings_fail_before_the_model_loads_and_leave_no_folder(
    no_model, tmp_path, change, message
):
    out = tmp_path / "new" / "run"
    with pytest.raises(ValueError, match=message):
        generate(dataclasses.replace(TINY, **change), out_dir=out)
    assert not out.exists()


def test_a_library_that_fails_to_load_does_so_before_the_model(no_model, tmp_path):
    fake = tmp_path / "library.npz"
    np.savez(fake, something=np.zeros(3))
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="is not a clipclop-jax library"):
        generate(dataclasses.replace(TINY, patches=str(fake)), out_dir=out)
    assert not out.exists()


def test_a_users_empty_folder_is_kept_on_failure(no_model, tmp_path):
    fake = tmp_path / "library.npz"
    np.savez(fake, something=np.zeros(3))
    out = tmp_path / "mine"
    out.mkdir()
    with pytest.raises(ValueError, match="is not a clipclop-jax library"):
        generate(dataclasses.replace(TINY, patches=str(fake)), out_dir=out)
    assert out.is_dir() and not os.listdir(out)


def test_a_tiled_run_checks_every_tiles_prompts_first(no_model, tmp_path):
    config = dataclasses.replace(TINY, tiles="2x1", tile_prompts="a red circle | sun:inf")
    out = tmp_path / "run"
    with pytest.raises(PromptError, match=r"^prompt 1 'sun:inf'"):
        generate_tiled(config, out_dir=out)
    assert not out.exists()


@pytest.mark.parametrize("mine", [False, True])
def test_a_failed_tiled_run_leaves_no_folder_it_made(no_model, tmp_path, mine):
    fake = tmp_path / "library.npz"
    np.savez(fake, something=np.zeros(3))
    out = tmp_path / "run"
    if mine:
        out.mkdir()
    config = dataclasses.replace(TINY, tiles="2x1", patches=str(fake))
    with pytest.raises(ValueError, match="is not a clipclop-jax library"):
        generate_tiled(config, out_dir=out)
    assert (out.is_dir() and not os.listdir(out)) if mine else not out.exists()


def test_a_batch_that_cannot_run_is_refused_first_and_leaves_no_folder(
    no_model, tmp_path, monkeypatch
):
    monkeypatch.setattr(preflight, "available_memory", lambda: (24 * 2**30, None))
    out = tmp_path / "batch"
    big = dataclasses.replace(TINY, output_size=32768)
    with pytest.raises(ValueError, match=r"^the final render needs about .* lower --output-size"):
        generate_batch(["a red circle", "a blue circle"], big, out)
    assert not out.exists()


@pytest.mark.parametrize("mine", [False, True])
def test_a_batch_whose_library_fails_leaves_no_folder_it_made(no_model, tmp_path, mine):
    fake = tmp_path / "library.npz"
    np.savez(fake, something=np.zeros(3))
    out = tmp_path / "batch"
    if mine:
        out.mkdir()
    with pytest.raises(ValueError, match="is not a clipclop-jax library"):
        generate_batch(["a red circle"], dataclasses.replace(TINY, patches=str(fake)), out)
    assert (out.is_dir() and not os.listdir(out)) if mine else not out.exists()


def test_a_batch_of_bad_prompts_never_loads_the_model(no_model, tmp_path):
    items = generate_batch(["red | ", "sun:inf"], TINY, tmp_path / "batch")
    assert [item.error.split(":")[0] for item in items] == ["PromptError", "PromptError"]
    assert "'sun:inf'" in items[1].error
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == [
        "summary.csv",
        "summary.json",
    ]
