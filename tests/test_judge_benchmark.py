"""benchmarks/judge.py end to end on a tiny canvas: it makes, saves and reads collages, reads
them as the judge does when called directly, and --rejudge reads the same pixels again."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest

from clipclop_jax import load_guides, load_perceptor
from clipclop_jax.guidance.demo_data.captions import COLOUR_NAMES
from clipclop_jax.guidance.demo_data.drawing import SHAPES
from clipclop_jax.guidance.demo_data.zero_shot import read_colour_and_shape, zero_shot_prompts
from clipclop_jax.io import read_rgba

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = [
    "--prompts",
    "2",
    "--steps",
    "2",
    *("--set", "collage.canvas_height=32", "--set", "collage.canvas_width=32"),
    *("--set", "collage.num_patches=3", "--set", "population=1"),
    *("--set", "optim.num_crops=1", "--set", "high_res_multiplier=1"),
    *("--set", "evolution.method=none"),
]


@pytest.fixture(scope="module")
def judge_script():
    spec = importlib.util.spec_from_file_location("judge_script", ROOT / "benchmarks" / "judge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def made(judge_script, tmp_path_factory):
    out = tmp_path_factory.mktemp("judge")
    judge_script.main([*TINY, "--out", str(out)])
    return out, json.loads((out / "results.json").read_text())


def reading(model, image: np.ndarray) -> str:
    embeds = model.embed_images(model.params, image[None])
    colour, shape = read_colour_and_shape(embeds, model.embed_text(zero_shot_prompts()))
    return f"{COLOUR_NAMES[int(colour[0])]} {SHAPES[int(shape[0])]}"


def test_results_hold_each_prompt_and_the_judges_reading_of_the_saved_collage(made):
    out, results = made
    assert [row["prompt"] for row in results["rows"]] == ["a red circle", "an orange square"]
    judge = load_perceptor(str(ROOT / "benchmarks" / "judge_clip"))
    guide = load_perceptor("demo")
    for index, row in enumerate(results["rows"]):
        saved = read_rgba(out / "collages" / f"{index:02d}.png")[0][..., :3]
        image = saved.astype(np.float32) / 255.0
        assert image.shape == (32, 32, 3)
        assert row["judge"] == reading(judge, image) and row["guide"] == reading(guide, image)
        assert row["judge_colour_ok"] == row["judge"].startswith(row["colour"] + " ")
        assert row["judge_shape_ok"] == row["judge"].endswith(" " + row["shape"])
    rows = results["rows"]
    assert results["accuracy"]["judge_shape"] == np.mean([r["judge_shape_ok"] for r in rows])
    assert results["settings_under_test"]["set"][0] == "collage.canvas_height=32"
    assert (out / "sheet.png").is_file()


def test_rejudge_reads_the_same_collages_the_same_way(judge_script, made):
    out, results = made
    judge_script.main([*TINY, "--out", str(out), "--rejudge"])
    again = json.loads((out / "results.json").read_text())
    keys = ("prompt", "judge", "guide", "loss")
    assert [[r[k] for k in keys] for r in again["rows"]] == [
        [r[k] for k in keys] for r in results["rows"]
    ]


def test_rejudge_with_other_settings_is_refused_in_one_line(judge_script, made, capsys):
    out, _ = made
    with pytest.raises(SystemExit) as stop:
        judge_script.main([*TINY, "--set", "seed=3", "--out", str(out), "--rejudge"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "was not made by guide demo with these settings for 'a red circle'" in err


def test_an_ensemble_guide_reads_by_its_weighted_logits(judge_script):
    guide = load_guides(f"demo,{ROOT / 'benchmarks' / 'second_guide_clip'}:3")
    reader = judge_script.Reader(guide)
    image = np.asarray(jax.random.uniform(jax.random.key(0), (40, 40, 3)))
    texts = [member.embed_text(zero_shot_prompts()) for member in guide.members]
    logits = sum(
        weight * np.asarray(member.embed_images(member.params, image[None]) @ text.T)
        for member, text, weight in zip(guide.members, texts, guide.weights, strict=True)
    )
    grid = logits.reshape(len(COLOUR_NAMES), len(SHAPES))
    # Weights 1 and 3, normalised: the second guide counts three times as much.
    assert guide.weights == pytest.approx((0.25, 0.75))
    colour = int(np.argmax(jax.nn.logsumexp(100 * grid, axis=1)))
    shape = int(np.argmax(jax.nn.logsumexp(100 * grid, axis=0)))
    assert reader.read(image) == (colour, shape)
