"""Model ensembles (``--model A,B:w``): the spec, the loss as the weighted sum of each model's
own loss, one compiled step, and runs that record and check the whole ensemble."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from model_folders import copy_demo_tokenizer
from test_evolution import chunk_compilations

from clipclop_jax import CollageConfig, GenerateConfig, OptimConfig, Resources, generate, resume
from clipclop_jax.cli.main import main
from clipclop_jax.collage.params import random_collage
from clipclop_jax.collage.render import render
from clipclop_jax.guidance.augment import AugmentConfig, random_augment
from clipclop_jax.guidance.ensemble import (
    PerceptorEnsemble,
    format_model_spec,
    load_guides,
    parse_model_spec,
)
from clipclop_jax.guidance.objective import Guidance, RegionConfig, make_collage_loss, prompt_loss
from clipclop_jax.guidance.perceptor import Perceptor, PromptError, demo_model_path
from clipclop_jax.library.load import load_library
from clipclop_jax.library.patch_library import PatchLibrary
from clipclop_jax.runs.resources import model_fingerprint, with_absolute_paths
from clipclop_jax.search.evolution import EvolutionConfig
from clipclop_jax.studio.session import Session

# --- The spec ---------------------------------------------------------------------------------


def test_a_model_spec_reads_names_and_weights():
    assert parse_model_spec("demo") == [("demo", 1.0)]
    assert parse_model_spec("demo, openai/clip-vit-base-patch32:0.5") == [
        ("demo", 1.0),
        ("openai/clip-vit-base-patch32", 0.5),
    ]
    assert parse_model_spec("demo:2,b:1e-1") == [("demo", 2.0), ("b", 0.1)]


def test_a_colon_that_starts_no_number_belongs_to_the_name():
    assert parse_model_spec(r"C:\models\clip") == [(r"C:\models\clip", 1.0)]
    assert parse_model_spec(r"C:\models\clip:3,demo") == [(r"C:\models\clip", 3.0), ("demo", 1.0)]
    assert parse_model_spec("runs/clip:v2") == [("runs/clip:v2", 1.0)]


def test_an_existing_folder_is_one_model_even_with_a_comma(tmp_path):
    folder = tmp_path / "clip,v2:0.5"
    folder.mkdir()
    assert parse_model_spec(str(folder)) == [(str(folder), 1.0)]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("demo:0", "has weight 0: give a finite weight > 0"),
        ("demo,b:-1", "has weight -1: give a finite weight > 0"),
        ("demo:nan,b", "has weight nan: give a finite weight > 0"),
        ("demo,b:inf", "has weight inf: give a finite weight > 0"),
        ("demo,,b", "has an empty part: separate models by single commas"),
        ("demo,", "has an empty part"),
        (":0.5,demo", "has an empty part"),
        ("  ", "is empty"),
        ("demo,demo:2", "is named twice"),
    ],
)
def test_a_bad_model_spec_is_one_line_naming_the_fix(spec, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_model_spec(spec)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match=message):
        GenerateConfig(model=spec)


def test_format_model_spec_reads_back():
    members = [("demo", 1.0), ("/m/b", 0.25), ("c", 3.0)]
    assert format_model_spec(members) == "demo,/m/b:0.25,c:3"
    assert parse_model_spec(format_model_spec(members)) == members


def test_ensemble_weights_are_normalised_and_need_two_members(demo):
    ensemble = PerceptorEnsemble("x", (demo, demo), (1.0, 3.0))
    assert ensemble.weights == (0.25, 0.75)
    with pytest.raises(ValueError, match="two or more models"):
        PerceptorEnsemble("x", (demo,), (1.0,))


# --- Two small models: the demo (64 px) and a random 32 px one --------------------------------


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory):
    """A random CLIP with its own input size (32 px), widths and embedding size (64), and the
    demo's tokenizer: a second, different model for an ensemble."""
    from transformers import CLIPConfig, FlaxCLIPModel

    demo_config = CLIPConfig.from_pretrained(str(demo_model_path()))
    text = demo_config.text_config.to_dict()
    text.update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1)
    vision = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=2,
        num_hidden_layers=1,
    )
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=64)
    folder = tmp_path_factory.mktemp("small-clip")
    FlaxCLIPModel(config, seed=0).save_pretrained(folder)
    copy_demo_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def demo():
    return load_guides("demo")


@pytest.fixture(scope="session")
def ensemble(small_folder):
    return load_guides(f"demo,{small_folder}:0.5")


def test_one_model_is_the_plain_perceptor(demo, small_folder):
    assert type(demo) is Perceptor and demo.name == "demo"
    assert type(load_guides(f"{small_folder}:3")) is Perceptor


def test_an_ensemble_embeds_text_with_each_models_own_tokenizer(ensemble, demo):
    assert isinstance(ensemble, PerceptorEnsemble)
    assert [m.image_size for m in ensemble.members] == [64, 32]
    np.testing.assert_allclose(ensemble.weights, (2 / 3, 1 / 3))
    first, second = ensemble.embed_text(["a red circle", "a blue square"])
    assert first.shape == (2, 128) and second.shape == (2, 64)
    np.testing.assert_array_equal(first, demo.embed_text(["a red circle", "a blue square"]))
    with pytest.raises(PromptError, match="tokens long but demo takes at most 77"):
        ensemble.embed_text(["red " * 80])


# --- The loss ---------------------------------------------------------------------------------

CANVAS = CollageConfig(canvas_height=32, canvas_width=32, num_patches=6)
OPTIM = OptimConfig(num_crops=2)
PROMPTS = ["a red circle", "a blue square"]
REGION_PROMPTS = ["red", "blue", "green", "yellow"]


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(0)
    rgba = rng.uniform(size=(4, 16, 16, 4)).astype(np.float32)
    rgba[:, [0, -1]] = 0
    rgba[:, :, [0, -1]] = 0
    library = PatchLibrary(jnp.asarray(rgba), jnp.full((4, 2), 14, jnp.int32))
    collage = random_collage(jax.random.key(1), CANVAS, 4)
    background = jnp.asarray(rng.uniform(size=(32, 32, 3)), jnp.float32)
    return library, collage, background


def _guidance(perceptor, scene, regions: bool) -> Guidance:
    library, _, background = scene
    extra = {}
    if regions:
        extra = dict(
            region_embeddings=perceptor.embed_text(REGION_PROMPTS),
            region_weights=jnp.asarray([0.2, 0.4, 0.1, 0.3], jnp.float32),
        )
    return Guidance(
        clip_params=perceptor.params,
        text_embeddings=perceptor.embed_text(PROMPTS),
        prompt_weights=jnp.asarray([1.0, -0.5], jnp.float32),
        library=library,
        background=background,
        **extra,
    )


def _value_and_grad_with_regions(perceptor, scene):
    """The loss and its gradient on a 2 x 2 region grid: both terms, the global prompts' and
    each region's."""
    loss = make_collage_loss(
        CANVAS, perceptor, OPTIM, AugmentConfig(), RegionConfig(rows=2, cols=2)
    )
    _, collage, _ = scene
    fn = jax.jit(jax.value_and_grad(lambda p, k, g: loss(p, collage.patch_index, k, g)[0]))
    return fn(collage.params, jax.random.key(7), _guidance(perceptor, scene, regions=True))


def test_the_ensemble_loss_is_the_weighted_sum_of_each_models_loss(ensemble, scene):
    value, grads = _value_and_grad_with_regions(ensemble, scene)
    alone = [_value_and_grad_with_regions(member, scene) for member in ensemble.members]
    expected = sum(w * v for w, (v, _) in zip(ensemble.weights, alone, strict=True))
    np.testing.assert_allclose(float(value), float(expected), rtol=1e-6, atol=1e-6)
    for leaf, *member_leaves in zip(
        jax.tree.leaves(grads), *(jax.tree.leaves(g) for _, g in alone), strict=True
    ):
        summed = sum(w * g for w, g in zip(ensemble.weights, member_leaves, strict=True))
        np.testing.assert_allclose(leaf, summed, rtol=1e-5, atol=1e-6)
    # Both models matter: neither alone gives the ensemble's loss.
    assert all(abs(float(value) - float(v)) > 1e-4 for v, _ in alone)


def test_an_ensemble_refuses_guidance_made_for_one_model(ensemble, demo, scene):
    _, collage, _ = scene
    loss = make_collage_loss(CANVAS, ensemble, OPTIM, AugmentConfig())
    with pytest.raises(ValueError, match="is not a tuple of 2 \\(one per model"):
        loss(collage.params, collage.patch_index, jax.random.key(0), _guidance(demo, scene, False))


def test_a_single_models_loss_is_render_crops_embed_compare_bit_for_bit(demo, scene):
    library, collage, background = scene
    guidance = _guidance(demo, scene, regions=False)
    loss = make_collage_loss(CANVAS, demo, OPTIM, AugmentConfig())
    key = jax.random.key(7)

    def by_hand(params, guidance):
        image = render(collage._replace(params=params), library, background, CANVAS)
        crops = random_augment(key, image, num_crops=2, output_size=64)
        return prompt_loss(demo.embed_images(guidance.clip_params, crops), guidance)

    value = jax.jit(lambda p, g: loss(p, collage.patch_index, key, g)[0])(collage.params, guidance)
    expected = jax.jit(by_hand)(collage.params, guidance)
    assert np.asarray(value).tobytes() == np.asarray(expected).tobytes(), (value, expected)


# --- Runs -------------------------------------------------------------------------------------

TINY = GenerateConfig(
    prompt="a red circle",
    population=2,
    output_size=32,
    lowres_size=32,
    highres_size=64,
    collage=CollageConfig(canvas_height=32, canvas_width=32, num_patches=8),
    optim=OptimConfig(steps=4, chunk_steps=2, num_crops=2),
    evolution=EvolutionConfig(method="none"),
)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    cache = tmp_path_factory.mktemp("library-cache")
    return load_library("shapes", lowres_size=32, highres_size=64, cache_dir=cache)


@pytest.fixture(scope="module")
def ensemble_run(ensemble, library, tmp_path_factory):
    """A 4-step run guided by the ensemble, then the same settings with another prompt; the
    optimisation chunks each compiled."""
    config = dataclasses.replace(TINY, model=ensemble.name)
    resources = Resources(ensemble, library)
    out = tmp_path_factory.mktemp("ensemble-run")
    with chunk_compilations() as first:
        result = generate(config, out_dir=out, resources=resources)
    with chunk_compilations() as second:
        generate(dataclasses.replace(config, prompt="a blue square"), resources=resources)
    return out, result, list(first), list(second)


def test_an_ensemble_run_writes_its_collage_and_records_the_spec(ensemble_run, ensemble):
    out, result, _, _ = ensemble_run
    assert result.image.shape == (32, 32, 3) and np.isfinite(result.loss)
    assert (out / "collage.png").is_file()
    assert json.loads((out / "config.json").read_text())["model"] == ensemble.name


def test_the_ensemble_step_compiles_once_for_all_models_and_prompts(ensemble_run):
    _, _, first, second = ensemble_run
    assert len(first) == 1, first  # one chunk program holds both models
    assert second == [], second  # a new prompt is new arguments, not a new program


def test_resume_refuses_another_ensemble_or_other_weights(ensemble_run, ensemble, library):
    out, *_ = ensemble_run
    demo, small = ensemble.members
    others = {
        "other weights": PerceptorEnsemble(ensemble.name, (demo, small), (1.0, 1.0)),
        "other order": PerceptorEnsemble(ensemble.name, (small, demo), (0.5, 1.0)),
        "one model": demo,
    }
    for what, perceptor in others.items():
        assert model_fingerprint(perceptor) != model_fingerprint(ensemble), what
        with pytest.raises(ValueError, match="the CLIP model differs from the one this run"):
            resume(out, resources=Resources(perceptor, library))
    # The same models and weights, given as other (unnormalised) numbers, are the same run.
    same = PerceptorEnsemble("demo:2,small", (demo, small), (2.0, 1.0))
    assert model_fingerprint(same) == model_fingerprint(ensemble)


def test_cli_generate_takes_an_ensemble_and_saves_its_folders_absolute(
    small_folder, tmp_path, monkeypatch
):
    monkeypatch.chdir(small_folder.parent)
    spec = f"demo,{small_folder.name}:0.5"
    assert with_absolute_paths(GenerateConfig(model=spec)).model == f"demo,{small_folder}:0.5"
    out = tmp_path / "run"
    # No steps: the population is scored once by both models, and the collage written.
    argv = ["generate", "a red circle", "--model", spec, "--out", str(out), "--quiet"]
    argv += ["--steps", "0", "--size", "32", "--num-patches", "4", "--population", "1"]
    argv += ["--output-size", "32", "--lowres-size", "32", "--highres-size", "64"]
    assert main(argv) == 0
    assert (out / "collage.png").is_file()
    assert json.loads((out / "config.json").read_text())["model"] == f"demo,{small_folder}:0.5"


def test_a_studio_session_takes_new_prompts_for_every_model_without_compiling(
    ensemble, library, tmp_path
):
    config = dataclasses.replace(TINY, model=ensemble.name)
    with chunk_compilations() as first:
        session = Session.create(
            config, tmp_path / "studio", resources=Resources(ensemble, library)
        )
        session.advance(2)
    assert len(first) <= 1, first  # none if the run above compiled these settings
    with chunk_compilations() as compiled:
        session.set_prompt("a blue square:1 | red:-0.5")
        result = session.advance(2)
    assert compiled == [] and np.isfinite(result["best_loss"])
    assert session.view().prompt == "a blue square:1 | red:-0.5"
    session.close()
