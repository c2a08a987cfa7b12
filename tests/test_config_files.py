"""Config files: YAML and JSON agree, options override files, and every mistake is one line
that names the setting and the valid choices, before a run starts."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipclop_jax import GenerateConfig
from clipclop_jax.cli.main import build_parser, config_from_args, main
from clipclop_jax.io import save_png
from clipclop_jax.runs import config_files

SETTINGS = {
    "prompt": "a cat made of leaves",
    "population": 4,
    "optim": {"steps": 500, "learning_rate": 0.5},
    "collage": {"num_patches": 30},
    "output": {"checkpoint_every": 50, "gif": True},
}
P = "prompt: a red circle\n"
YAML = """\
prompt: a cat made of leaves
population: 4
optim:
  steps: 500
  learning_rate: .5
collage: {num_patches: 30}
output:
  checkpoint_every: 50
  gif: true
"""


def from_argv(*argv: str) -> GenerateConfig:
    return config_from_args(build_parser().parse_args(["generate", "--out", "unused", *argv]))


def test_yaml_and_json_files_give_the_same_config(tmp_path):
    (tmp_path / "run.yaml").write_text(YAML)
    (tmp_path / "run.json").write_text(json.dumps(SETTINGS))
    from_yaml = config_files.load_config_file(tmp_path / "run.yaml")
    assert from_yaml == config_files.load_config_file(tmp_path / "run.json")
    config = config_files.build_config(GenerateConfig, from_yaml)
    assert config.population == 4 and config.optim.steps == 500
    assert config.collage.num_patches == 30 and config.output.gif
    assert config.seed == GenerateConfig().seed  # what the file leaves out keeps its default


def test_options_given_override_the_file_and_the_rest_stands(tmp_path):
    (tmp_path / "run.yaml").write_text(YAML)
    config = from_argv(
        "--config",
        str(tmp_path / "run.yaml"),
        "--steps",
        "7",
        "--mp4",
        "--set",
        "collage.render_mode=opacity",
        "--set",
        "augment.crop_scale=[0.5, 0.8]",
    )
    assert config.prompt == "a cat made of leaves" and config.population == 4
    assert config.optim.steps == 7 and config.optim.learning_rate == 0.5
    assert config.output.gif and config.output.mp4 and config.output.checkpoint_every == 50
    assert config.collage.render_mode == "opacity" and config.augment.crop_scale == (0.5, 0.8)


def test_without_a_file_the_options_give_the_old_defaults():
    config = from_argv("a red circle", "--size", "96", "--no-augment", "--optimizer", "sgd")
    assert config.collage.canvas_shape == (96, 96)
    assert not config.optim.use_augmentations
    assert config.optim.learning_rate == 0.1  # sgd: the original's rate
    assert config.optim.steps == GenerateConfig().optim.steps


def test_overrides_of_text_settings_stay_text():
    config = from_argv(
        "--set", "prompt=a cat: big", "--set", "background=#ff0000", "--set", "output_size=null"
    )
    assert config.prompt == "a cat: big" and config.background == "#ff0000"
    assert config.output_size is None


@pytest.mark.parametrize(
    "text, message",
    [
        (
            P + "optim: {stpes: 5}",
            "unknown setting 'optim.stpes'; did you mean 'optim.steps'? Valid settings of "
            "optim: optimizer, steps,",
        ),
        (P + "populaton: 3", "unknown setting 'populaton'; did you mean 'population'?"),
        (P + "optim: {steps: -3}", "steps=-3 is out of range: use a value in [0, 10000000]"),
        (P + "population: many", "population='many' is not valid: use a whole number"),
        (P + "output: {gif: maybe}", "output.gif='maybe' is not valid: use true or false"),
        (P + "collage: {render_mode: glue}", "render_mode='glue' is not valid: choose one of"),
        (P + "collage: 3", "collage holds settings (key: value), not int"),
        ("- a\n- b", "a config file holds settings as 'key: value' lines, not a list"),
        ("seed: 1\nprompt: [unclosed", "not valid YAML at line 3"),
    ],
)
def test_mistakes_get_one_line_before_the_run_starts(tmp_path, capsys, text, message):
    (tmp_path / "run.yaml").write_text(text + "\n")
    out = tmp_path / "out"
    code = main(["generate", "--out", str(out), "--config", str(tmp_path / "run.yaml")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("clipclop: error:"), err
    assert message in err
    assert not out.exists()  # nothing was started


def test_a_bad_override_or_a_missing_prompt_is_one_line(capsys):
    for argv, message in [
        (["--set", "optim.steps"], "'optim.steps' is not an override: write KEY=VALUE"),
        (["--set", "optim.steps=lots", "x"], "optim.steps='lots' is not valid"),
        ([], "no prompt: give it as the first argument or as 'prompt' in --config"),
        (["--config", "/no/such.yaml"], "config file /no/such.yaml does not exist"),
    ]:
        assert main(["generate", "--out", "unused", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err


def test_a_collage_png_carries_its_config(tmp_path):
    config = GenerateConfig(prompt="a blue square", population=3)
    text = {"clipclop_jax_config": json.dumps(config.to_dict())}
    save_png(tmp_path / "collage.png", np.zeros((4, 4, 3)), text=text)
    assert from_argv("--config", str(tmp_path / "collage.png")) == config
    save_png(tmp_path / "plain.png", np.zeros((4, 4, 3)))
    with pytest.raises(ValueError, match="carries no clipclop config"):
        config_files.load_config_file(tmp_path / "plain.png")


@pytest.mark.parametrize(
    "command, data",
    [
        ("config", "prompt: café\n".encode("latin-1")),
        ("config", b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary"),
        ("batch", "a café\n".encode("latin-1")),
    ],
)
def test_a_file_that_is_not_utf8_is_named_in_one_line(tmp_path, capsys, command, data):
    path = tmp_path / ("run.yaml" if command == "config" else "prompts.txt")
    path.write_bytes(data)
    out = tmp_path / "out"
    if command == "config":
        argv = ["generate", "--out", str(out), "--config", str(path)]
        what = "a config file must be saved as UTF-8"
    else:
        argv = ["batch", str(path), "--out", str(out)]
        what = "a prompts file must be saved as UTF-8"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"clipclop: error: {path} is not UTF-8 text" in err and what in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "a cat", "--out", ""],
        ["batch", "prompts.txt", "--out", " "],
        ["patches", "build", "photos", "--out", ""],
    ],
)
def test_an_empty_out_is_one_line(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == "clipclop: error: --out is empty: give the output path, e.g. --out runs/cat."


def test_the_originals_unnormalised_clip_input_is_a_setting():
    args = build_parser().parse_args(
        ["generate", "x", "--out", "o", "--set", "optim.normalize_input=false"]
    )
    assert config_from_args(args).optim.normalize_input is False
    assert GenerateConfig().optim.normalize_input is True
