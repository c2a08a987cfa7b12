"""The studio session with the demo CLIP on a 32-pixel canvas: edits between chunks compile
nothing, frozen patches stay bit-identical through steps and generations, outlines match
the rendered alpha, bad edits change nothing, and a session's folder resumes and replays
bit for bit."""

from __future__ import annotations

import dataclasses
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipclop_jax import (
    CollageConfig,
    GenerateConfig,
    OptimConfig,
    Resources,
    load_library,
    load_perceptor,
)
from clipclop_jax.cli.main import main
from clipclop_jax.collage.hires import render_high_res
from clipclop_jax.collage.params import Collage, CollageParams, random_population, take
from clipclop_jax.collage.render import render
from clipclop_jax.collage.transforms import patch_corners
from clipclop_jax.library.patch_library import PatchLibrary
from clipclop_jax.runs import checkpoint
from clipclop_jax.runs.outputs import load_collage
from clipclop_jax.runs.setup import state_template
from clipclop_jax.search.evolution import EvolutionConfig
from clipclop_jax.search.optimise import init_state, make_chunk, make_evolution_step, make_optimizer
from clipclop_jax.studio.session import Session, read_log, replay, resume_session

# Microbial evolution every 3 steps swapping a patch every generation: frozen slots must
# survive both. Chunks of 4 steps.
CONFIG = GenerateConfig(
    prompt="a red circle",
    population=2,
    output_size=32,
    lowres_size=16,
    highres_size=32,
    collage=CollageConfig(canvas_height=32, canvas_width=32, num_patches=6),
    optim=OptimConfig(steps=16, chunk_steps=4, num_crops=1, use_augmentations=False),
    evolution=EvolutionConfig(method="microbial", frequency=3, patch_mutation_probability=1.0),
)

# Every kind of edit, in an order that leaves a hidden slot for "add".
EDITS = [
    {"op": "freeze", "member": None, "patch": 2},
    {"op": "move", "member": 0, "patch": 1, "dx": 3.0, "dy": -2.0},
    {"op": "scale", "member": 1, "patch": 1, "factor": 1.25},
    {"op": "rotate", "member": 0, "patch": 4, "degrees": 30.0},
    {"op": "squeeze", "member": None, "patch": 0, "factor": 1.1},
    {"op": "recolour", "member": 0, "patch": 0, "colour": [1.0, 0.2, 0.2]},
    {"op": "front", "member": 0, "patch": 3},
    {"op": "back", "member": 1, "patch": 3},
    {"op": "swap", "member": 0, "patch": 5, "library_patch": 1},
    {"op": "hide", "member": None, "patch": 4},
    {"op": "hide", "member": 0, "patch": 5},
    {"op": "show", "member": 0, "patch": 5},
    {"op": "add", "member": 1, "library_patch": 2, "x": 8.0, "y": 20.0},
    {"op": "prompt", "prompt": "a blue square:1 | red:-0.5"},
    {"op": "unfreeze", "member": 1, "patch": 2},
    {"op": "freeze", "member": 1, "patch": 2},
]


@pytest.fixture(scope="module")
def resources(tmp_path_factory):
    cache = tmp_path_factory.mktemp("library-cache")
    library = load_library("shapes", lowres_size=16, highres_size=32, cache_dir=cache)
    return Resources(load_perceptor("demo"), library)


class CompileCounter:
    """Counts XLA backend compilations (jax.monitoring's compile-duration event)."""

    def __init__(self):
        self.count = 0
        self.active = False
        jax.monitoring.register_event_duration_secs_listener(self._event)

    def _event(self, event, duration, **kwargs):
        if self.active and event == "/jax/core/compile/backend_compile_duration":
            self.count += 1


COUNTER = CompileCounter()


@pytest.fixture(scope="module")
def edited(resources, tmp_path_factory):
    """A session stepped with every edit between chunks; what it recorded on the way."""
    out = tmp_path_factory.mktemp("studio") / "run"
    session = Session.create(CONFIG, out, resources=resources)
    session.advance(3)
    # Warm up what the first call of each host helper compiles (not the chunk's business).
    session.render(0)
    session.outlines(0)
    session.patch_at(0, 16.0, 16.0)
    before = session.view()
    COUNTER.count, COUNTER.active = 0, True
    try:
        for edit in EDITS:
            session.apply(edit)
        session.undo()
        session.redo()
        after_edits = session.view()
        session.advance(9)  # chunks 3-4, 4-8, 8-12; generations after steps 3, 6, 9, 12
        session.render(None)
        session.outlines(1)
        session.patch_at(1, 8.0, 8.0)
    finally:
        COUNTER.active = False
    return session, before, after_edits, COUNTER.count


def test_no_edit_recompiles(edited):
    _, _, _, compiles = edited
    assert compiles == 0


def test_edits_land_in_canvas_units_and_are_clamped(edited):
    session, before, after, _ = edited
    height, width = CONFIG.collage.canvas_shape
    moved = after.params.translation[0, 1] - before.params.translation[0, 1]
    np.testing.assert_allclose(moved * [width / 2, height / 2], [3.0, -2.0], atol=1e-4)
    np.testing.assert_allclose(after.params.scale[1, 1], min(2.0, before.params.scale[1, 1] / 1.25))
    assert after.params.order[0, 3] == 1.0 and after.params.order[1, 3] == 0.0
    # Recolour clamps to the rgb range [-0.2, 1].
    np.testing.assert_array_equal(after.params.colour[0, 0], np.float32([1.0, 0.2, 0.2]))
    assert after.patch_index[0, 5] == 1 and not after.hidden[0, 5]
    assert after.hidden[:, 4].tolist() == [True, False]  # member 1's slot 4 was re-added
    assert after.patch_index[1, 4] == 2
    np.testing.assert_allclose(
        (after.params.translation[1, 4] + 1) * [width / 2, height / 2], [8.0, 20.0], atol=1e-4
    )
    assert after.frozen[:, 2].all() and after.frozen.sum() == 2
    assert after.prompt == "a blue square:1 | red:-0.5" == session.config.prompt


def test_frozen_patches_stay_bit_identical_through_steps_and_generations(edited):
    session, _, after, _ = edited
    now = session.view()
    assert now.step == 12
    for field in CollageParams._fields:
        then, later = getattr(after.params, field), getattr(now.params, field)
        np.testing.assert_array_equal(later[:, 2], then[:, 2], err_msg=field)
        assert not np.array_equal(later[:, 1], then[:, 1]) or field == "order", field
    np.testing.assert_array_equal(now.patch_index[:, 2], after.patch_index[:, 2])
    # A hidden slot keeps its cut-out (so "show" brings it back) and stays hidden.
    assert now.hidden[0, 4] and now.patch_index[0, 4] == after.patch_index[0, 4]


def test_rotation_is_clockwise_in_degrees_and_scale_multiplies_the_outline(resources, tmp_path):
    session = Session.create(
        dataclasses.replace(CONFIG, optim=dataclasses.replace(CONFIG.optim, steps=0)),
        tmp_path / "run",
        resources=resources,
    )
    session.apply({"op": "rotate", "member": 0, "patch": 0, "degrees": 0.0})
    start = session.outlines(0)[0]
    session.apply({"op": "scale", "member": 0, "patch": 0, "factor": 0.5})
    smaller = session.outlines(0)[0]
    centre = start.mean(0)
    scale = np.linalg.norm(smaller - centre, axis=1) / np.linalg.norm(start - centre, axis=1)
    clamped = session.view().params.scale[0, 0] == CONFIG.collage.max_scale
    if not clamped:
        np.testing.assert_allclose(scale, 0.5, rtol=1e-5)
    rotation = session.view().params.rotation[0, 0]
    if abs(rotation) < 2.0:  # away from the +-pi wrap
        session.apply({"op": "rotate", "member": 0, "patch": 0, "degrees": 90.0})
        turned = session.outlines(0)[0]
        # Clockwise on screen (y down): each corner goes where the one before it was, as
        # top-left -> top-right for an upright square.
        offset, new = smaller[0] - centre, turned[0] - centre
        np.testing.assert_allclose(new, [-offset[1], offset[0]], atol=1e-3)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"op": "teleport", "member": 0, "patch": 0}, "unknown edit op"),
        ({"op": "move", "member": 0, "patch": 99, "dx": 1.0, "dy": 0.0}, "patch must be"),
        ({"op": "move", "member": 7, "patch": 0, "dx": 1.0, "dy": 0.0}, "member must be"),
        ({"op": "move", "member": 0, "patch": 0, "dx": float("nan"), "dy": 0.0}, "finite"),
        ({"op": "move", "member": 0, "patch": 0, "dx": 1e300, "dy": 0.0}, "finite"),
        ({"op": "move", "member": 0, "patch": 0, "dx": "1", "dy": 0.0}, "must be a number"),
        ({"op": "move", "member": 0, "patch": 0, "dx": 1.0}, "missing: dy"),
        ({"op": "scale", "member": 0, "patch": 0, "factor": 0.0}, "factor must be"),
        ({"op": "hide", "member": True, "patch": 0}, "member must be"),
        ({"op": "swap", "member": 0, "patch": 0, "library_patch": 10**6}, "library_patch"),
        ({"op": "freeze", "member": 0, "patch": 0, "evil": 1}, "unknown: evil"),
        ({"op": "recolour", "member": 0, "patch": 0, "colour": [1, 2]}, "3 numbers"),
        ({"op": "prompt", "prompt": ""}, "prompt is empty"),
        ({"op": "prompt", "prompt": " | ".join(["a"] * 9)}, "at most 8"),
        ({"op": "add", "member": 1, "library_patch": 0, "x": 1.0, "y": 1.0}, "no hidden slot"),
        (["move"], "JSON object"),
        ({"op": "undo", "member": 0}, "takes no fields"),
    ],
)
def test_a_bad_edit_gets_one_line_and_changes_nothing(edited, edit, message):
    session = edited[0]
    before, log = session.view(), read_log(session.out_dir)
    files = sorted(os.listdir(os.path.join(session.out_dir, "checkpoints")))
    with pytest.raises(ValueError, match=message) as error:
        session.apply(edit)
    assert "\n" not in str(error.value)
    after = session.view()
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True):
        np.testing.assert_array_equal(a, b)
    assert read_log(session.out_dir) == log
    assert sorted(os.listdir(os.path.join(session.out_dir, "checkpoints"))) == files


def test_replay_and_resume_give_the_same_collage_bit_for_bit(edited, resources, tmp_path):
    session = edited[0]
    log = read_log(session.out_dir)
    assert [e["step"] for e in log] == [3] * (len(EDITS) + 2)
    # Two more edits at a later step, between chunks of another length.
    session.apply({"op": "move", "member": None, "patch": 0, "dx": -5.0, "dy": 5.0})
    session.undo()
    session.apply({"op": "hide", "member": 1, "patch": 0})
    log = read_log(session.out_dir)
    # Replayed from the config and the log: stops at the last edit's step, 12.
    again = replay(CONFIG, log, tmp_path / "replayed", resources=resources)
    assert again.step == session.step == 12
    for a, b in zip(jax.tree.leaves(session.view()), jax.tree.leaves(again.view()), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(session.render(None), again.render(None))
    # Closed, then resumed (a new Session.open inside) runs on to the end with the edits and
    # the frozen set, as the session that never stopped.
    again.close()
    resume_session(tmp_path / "replayed", resources=resources)
    session.advance(session.total_steps - session.step)
    session.export()
    ours, _ = load_collage(os.path.join(session.out_dir, "params.npz"))
    theirs, _ = load_collage(tmp_path / "replayed" / "params.npz")
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (np.asarray(ours.patch_index) == -1).any()  # the hidden slot is drawn as empty
    # `clipclop resume` of a session's folder goes through the session (a finished one just
    # writes its files again, with its edits: the hidden slot stays empty).
    os.remove(tmp_path / "replayed" / "params.npz")
    assert main(["resume", str(tmp_path / "replayed"), "--quiet"]) == 0
    again, _ = load_collage(tmp_path / "replayed" / "params.npz")
    np.testing.assert_array_equal(again.patch_index, theirs.patch_index)


def test_an_edit_logged_but_not_checkpointed_is_made_on_open(edited, resources, tmp_path):
    session = edited[0]
    copy = tmp_path / "copy"
    shutil.copytree(session.out_dir, copy)
    with open(copy / "edits.jsonl", "a") as handle:  # as if the process died after logging
        handle.write(f'{{"op": "freeze", "member": 0, "patch": 5, "step": {session.step}}}\n')
        handle.write('{"op": "fre')  # and a torn line
    reopened = Session.open(copy, resources=resources)
    assert reopened.view().frozen[0, 5] and reopened.step == session.step


def test_an_edit_left_to_save_edits_is_restored_after_a_crash_before_or_after_a_chunk(
    resources, tmp_path
):
    # The web worker checkpoints an edit only after sending its frame: until then the log
    # alone must restore it, and a chunk's checkpoint in between must count it as held.
    output = dataclasses.replace(CONFIG.output, checkpoint_every=4)
    session = Session.create(
        dataclasses.replace(CONFIG, output=output), tmp_path / "run", resources=resources
    )
    session.checkpoint_each_edit = False
    session.advance(4)
    moved_from = session.view().params.translation[0, 1]
    session.apply({"op": "move", "member": 0, "patch": 1, "dx": 3.0, "dy": -2.0})
    edited = session.view()
    assert (edited.params.translation[0, 1] != moved_from).all()
    shutil.copytree(session.out_dir, tmp_path / "before")  # died before a checkpoint held it
    session.advance(4)  # the step-8 checkpoint holds the edit
    shutil.copytree(session.out_dir, tmp_path / "after")
    for folder, expected in (("before", edited), ("after", session.view())):
        reopened = Session.open(tmp_path / folder, resources=resources).view()
        assert reopened.step == expected.step
        for name in ("params", "patch_index", "frozen", "hidden", "history"):
            for a, b in zip(
                jax.tree.leaves(getattr(expected, name)),
                jax.tree.leaves(getattr(reopened, name)),
                strict=True,
            ):
                np.testing.assert_array_equal(a, b, err_msg=f"{folder}: {name}")


def test_an_old_checkpoint_restores_with_no_frozen_or_hidden_patch():
    folder = os.path.join(os.path.dirname(__file__), "data", "run-0.1.0-interrupted")
    saved = checkpoint.load_latest(folder)
    assert ".frozen" not in saved.meta["paths"]
    config = GenerateConfig.from_dict(saved.config)
    state = checkpoint.restore_state(saved, state_template(config))
    assert state.frozen.shape == state.population.patch_index.shape
    assert not state.frozen.any() and not state.hidden.any()


def opaque_library(side=16) -> PatchLibrary:
    rgba = np.ones((1, side, side, 4), np.float32)
    return PatchLibrary(jnp.asarray(rgba), jnp.asarray([[side, side]], jnp.int32))


def test_an_outline_holds_the_rendered_alpha():
    config = CollageConfig(
        canvas_height=48,
        canvas_width=64,
        num_patches=1,
        render_mode="transparency",
        patch_max_proportion=2.0,
    )
    params = CollageParams(
        translation=jnp.float32([[0.1, -0.2]]),
        rotation=jnp.float32([0.6]),
        scale=jnp.float32([1.3]),
        squeeze=jnp.float32([1.4]),
        shear=jnp.float32([0.15]),
        colour=jnp.ones((1, 3), jnp.float32),
        order=jnp.float32([0.5]),
    )
    library = opaque_library()
    image = render(Collage(params, jnp.int32([0])), library, jnp.zeros((48, 64, 3)), config)
    alpha = np.asarray(image)[..., 0]  # white patch over black: the image is its alpha
    corners = patch_corners(params, config, library.side)[0]
    rows, cols = np.mgrid[0:48, 0:64]
    points = np.stack([cols + 0.5, rows + 0.5], -1)
    # Signed distance inside the convex outline (positive inside), from its four edges.
    distances = []
    for a, b in zip(corners, np.roll(corners, -1, axis=0), strict=True):
        edge = b - a
        normal = np.array([edge[1], -edge[0]]) / np.linalg.norm(edge)
        distances.append((points - a) @ normal)
    distances = np.stack(distances)
    inside = distances.min(0) if distances.sum() > 0 else -distances.max(0)
    covered = alpha > 0.5
    assert covered.sum() > 200
    assert (inside[covered] > -1.0).all()  # every covered pixel within a pixel of the outline
    assert covered[inside > 1.0].all()  # and the outline filled up to a pixel of its edge


def test_hidden_draws_nothing_at_canvas_and_output_size():
    config = CollageConfig(canvas_height=32, canvas_width=32, num_patches=4)
    library = opaque_library()
    collage = take(random_population(jax.random.key(3), config, 1, 1), 0)
    hidden = collage._replace(patch_index=collage.patch_index.at[2].set(-1))
    away = collage._replace(
        params=collage.params._replace(translation=collage.params.translation.at[2].set(1e4))
    )
    background = jnp.full((32, 32, 3), 0.3)
    np.testing.assert_array_equal(
        render(hidden, library, background, config), render(away, library, background, config)
    )
    big = jnp.full((64, 64, 3), 0.3)
    np.testing.assert_array_equal(
        render_high_res(hidden, library, big, config, 64, 64),
        render_high_res(away, library, big, config, 64, 64),
    )


class ToyPerceptor:
    """A stand-in CLIP that compiles in a moment: the mean colour of the crops."""

    image_size = 8
    params = {"w": jnp.eye(3, 4)}

    def embed_images(self, params, images, *, normalize=True):
        features = images.mean(axis=(1, 2)) @ params["w"]
        return features / jnp.linalg.norm(features, axis=-1, keepdims=True)


@pytest.mark.parametrize("batching", ["per_collage", "population"])
def test_frozen_and_hidden_hold_in_both_batchings(batching):
    from clipclop_jax.guidance.augment import AugmentConfig
    from clipclop_jax.guidance.objective import Guidance

    collage = CollageConfig(canvas_height=16, canvas_width=16, num_patches=4)
    optim = OptimConfig(
        steps=8, chunk_steps=8, num_crops=1, batching=batching, use_augmentations=False
    )
    evolution = EvolutionConfig(method="es", frequency=1, patch_mutation_probability=1.0)
    library = opaque_library(8)._replace(rgba=jnp.ones((3, 8, 8, 4), jnp.float32))
    library = library._replace(sizes=jnp.full((3, 2), 8, jnp.int32))
    chunk = make_chunk(
        collage,
        ToyPerceptor(),
        optim,
        AugmentConfig(),
        after_step=make_evolution_step(evolution, collage, 3),
    )
    population = random_population(jax.random.key(0), collage, 3, 3)
    state = init_state(jax.random.key(1), population, make_optimizer(optim))
    frozen = np.zeros((3, 4), bool)
    frozen[:, 1] = True
    hidden = np.zeros((3, 4), bool)
    hidden[:, 3] = True
    state = state._replace(frozen=jnp.asarray(frozen), hidden=jnp.asarray(hidden))
    start = jax.device_get(state.population)
    guidance = Guidance(
        clip_params=ToyPerceptor.params,
        text_embeddings=jnp.float32([[0.0, 0.0, 1.0, 0.0]]),
        prompt_weights=jnp.float32([1.0]),
        library=library,
        background=jnp.zeros((16, 16, 3)),
    )
    state, _ = chunk(state, guidance, jnp.int32(8))
    end = jax.device_get(state.population)
    for a, b in zip(jax.tree.leaves(start), jax.tree.leaves(end), strict=True):
        np.testing.assert_array_equal(np.asarray(a)[:, 1], np.asarray(b)[:, 1])
    np.testing.assert_array_equal(start.patch_index[:, 3], end.patch_index[:, 3])
    assert not np.array_equal(start.params.translation[:, 0], end.params.translation[:, 0])
    assert (np.asarray(state.best.patch_index)[3] == -1) and np.asarray(state.hidden)[:, 3].all()


def test_the_hit_map_names_what_patch_at_names_at_every_pixel(edited):
    session = edited[0]
    for member in range(CONFIG.population):
        hits = session.hit_map(member)
        assert hits.shape == CONFIG.collage.canvas_shape and hits.dtype == np.int32
        assert (hits >= 0).any() and (hits == -1).any()
        hidden = session.view().hidden[member]
        assert not np.isin(np.flatnonzero(hidden), hits).any()  # a hidden patch is never hit
        for row in range(0, 32, 3):
            for col in range(0, 32, 3):
                named = session.patch_at(member, col + 0.5, row + 0.5)
                assert hits[row, col] == (-1 if named is None else named), (member, row, col)
