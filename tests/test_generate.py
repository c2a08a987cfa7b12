"""The main job end to end with the demo CLIP: guidance works, runs repeat, the CLI is clear."""

from __future__ import annotations

import dataclasses
import logging

import jax
import numpy as np
import pytest
from PIL import Image

from clipclop_jax import (
    CollageConfig,
    GenerateConfig,
    OptimConfig,
    Resources,
    generate,
    load_collage,
    load_library,
    load_perceptor,
)
from clipclop_jax.cli.main import main
from clipclop_jax.io import png_text
from clipclop_jax.runs.reblend import blend_run
from clipclop_jax.runs.tiled import generate_tiled
from clipclop_jax.search.evolution import EvolutionConfig

# Small enough to compile once (~15 s) and run 60 steps in seconds on 2 cores.
SMALL = GenerateConfig(
    prompt="a red circle",
    population=2,
    output_size=64,
    lowres_size=32,
    highres_size=64,
    collage=CollageConfig(canvas_height=64, canvas_width=64, num_patches=24),
    optim=OptimConfig(steps=60, chunk_steps=20, num_crops=2),
    evolution=EvolutionConfig(method="none"),
)


@pytest.fixture(scope="session")
def resources(tmp_path_factory):
    cache = tmp_path_factory.mktemp("library-cache")
    library = load_library("shapes", lowres_size=32, highres_size=64, cache_dir=cache)
    return Resources(load_perceptor("demo"), library)


@pytest.fixture(scope="session")
def red(resources):
    return generate(SMALL, resources=resources)


def redness(image: np.ndarray) -> float:
    return float(np.mean(image[..., 0]) - np.mean(image[..., 2]))


def test_guidance_raises_the_prompt_score(red):
    first, last = red.history[0], red.history[-1]
    assert red.history.shape == (60, 2)
    # Losses are minus the cosine similarity: the best collage must have gained clearly.
    assert last.min() < first.min() - 0.05, (first, last)
    assert red.loss <= last.min() + 1e-6


@pytest.fixture(scope="session")
def blue_and_compilations(resources, red):
    """The same run with another prompt, and the chunk compilations it caused."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("jax")
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            blue = generate(dataclasses.replace(SMALL, prompt="a blue circle"), resources=resources)
    finally:
        logger.removeHandler(handler)
    compiled = [r.getMessage() for r in records if r.getMessage().startswith("Compiling jit(")]
    return blue, compiled


def test_red_and_blue_prompts_move_the_colour_balance_their_way(red, blue_and_compilations):
    blue, _ = blue_and_compilations
    assert redness(red.image) > redness(blue.image) + 0.05
    assert redness(red.image) > 0 > redness(blue.image)


def test_same_seed_and_config_give_byte_identical_pngs(resources, red, tmp_path):
    first = generate(SMALL, resources=resources, out_dir=tmp_path / "a")
    second = generate(SMALL, resources=resources, out_dir=tmp_path / "b")
    assert (tmp_path / "a/collage.png").read_bytes() == (tmp_path / "b/collage.png").read_bytes()
    np.testing.assert_array_equal(first.history, red.history)
    np.testing.assert_array_equal(first.history, second.history)


def test_outputs_reproduce_the_run(resources, red, tmp_path):
    result = generate(SMALL, resources=resources, out_dir=tmp_path)
    config = GenerateConfig.from_dict(
        __import__("json").loads((tmp_path / "config.json").read_text())
    )
    assert config == SMALL
    embedded = png_text(tmp_path / "collage.png")["clipclop_jax_config"]
    assert GenerateConfig.from_dict(__import__("json").loads(embedded)) == SMALL
    collage, fingerprint = load_collage(tmp_path / "params.npz")
    assert fingerprint == resources.library.fingerprint
    np.testing.assert_array_equal(collage.patch_index, result.collage.patch_index)
    assert result.image.shape == (64, 64, 3)


def test_chunks_and_new_prompts_reuse_the_compiled_program(blue_and_compilations):
    # The red run compiled the chunk; the blue run (three chunks, a new prompt) compiles no
    # optimisation program again, only small host-side helpers at most.
    _, compiled = blue_and_compilations
    assert not [m for m in compiled if m.startswith("Compiling jit(chunk)")], compiled


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "-3"], "steps=-3 is out of range"),
        (["--population", "0"], "population=0 is out of range"),
        (["--patches", "/no/such/folder"], "does not exist"),
        (["--model", "/no/such/model"], "does not exist"),
        (["--background", "plaid"], "is not a colour"),
        (["--size", "4"], "canvas_height=4 is out of range"),
    ],
)
def test_cli_bad_values_get_one_line(argv, message, tmp_path, capsys):
    code = main(["generate", "a red circle", "--out", str(tmp_path / "out"), "--quiet", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("clipclop: error:"), err
    assert message in err


def test_a_region_prompt_moves_its_region_and_not_the_others(resources):
    config = dataclasses.replace(
        SMALL, prompt="a circle", region_prompts="something red:4 | something blue:4"
    )
    assert (config.regions.rows, config.regions.cols) == (1, 2)
    image = generate(config, resources=resources).image
    left, right = image[:, :32], image[:, 32:]
    assert redness(left) > redness(right) + 0.05, (redness(left), redness(right))


def test_tiles_follow_their_own_prompts_and_assemble_side_by_side(resources, tmp_path):
    config = dataclasses.replace(SMALL, tiles="2x1", tile_prompts="a red circle | a blue circle")
    result = generate_tiled(config, resources=resources, out_dir=tmp_path)
    assert result.image.shape == (64, 128, 3)
    assert result.history.shape == (60, 4)  # two tiles, population 2 each
    assert redness(result.image[:, :64]) > redness(result.image[:, 64:]) + 0.05
    for tile in ("r0c0", "r0c1"):
        assert (tmp_path / "tiles" / tile / "collage.png").exists()
    assert (
        GenerateConfig.from_dict(__import__("json").loads((tmp_path / "config.json").read_text()))
        == config
    )
    with pytest.raises(ValueError, match="tiled.generate_tiled"):
        generate(config, resources=resources)


def test_blend_smooths_a_finished_run_and_keeps_its_picture(resources, red, tmp_path):
    generate(SMALL, resources=resources, out_dir=tmp_path)
    path = blend_run(tmp_path, "poisson", resources=resources)
    blended = np.asarray(Image.open(path), np.float32) / 255
    plain = np.asarray(Image.open(tmp_path / "collage.png"), np.float32) / 255
    assert blended.shape == plain.shape
    difference = np.abs(blended - plain)
    # Seams move, the picture stays: small on average, not nothing.
    assert 0.0005 < difference.mean() < 0.05, difference.mean()
    assert redness(blended) > 0
