"""--preset: named sets of settings, applied before --config, the options and --set."""

from __future__ import annotations

import json

from clipclop_jax import GenerateConfig
from clipclop_jax.cli.main import build_parser, config_from_args, main
from clipclop_jax.runs import config_files
from clipclop_jax.runs.presets import PRESETS, preset_settings


def from_argv(*argv: str) -> GenerateConfig:
    return config_from_args(build_parser().parse_args(["generate", "--out", "unused", *argv]))


def dotted(values: dict, prefix: str = "") -> dict:
    """{"collage": {"num_patches": 100}} -> {"collage.num_patches": 100}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def setting(config: GenerateConfig, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


def test_the_original_preset_names_only_defaults_that_changed_and_puts_each_back():
    original = dotted(preset_settings("original"))
    assert original, "the preset is empty"
    config, default = from_argv("x", "--preset", "original"), GenerateConfig()
    for key, value in original.items():
        # Each entry undoes a change: the default differs, the preset gives the original.
        assert setting(default, key) != value, key
        assert setting(config, key) == value, key
    # Everything else stays as the defaults have it.
    untouched = {k: v for k, v in dotted(default.to_dict()).items() if k not in original}
    assert {k: v for k, v in dotted(config.to_dict()).items() if k in untouched} == {
        **untouched,
        "prompt": "x",
    }


def test_config_file_options_and_set_override_the_preset(tmp_path):
    key = next(iter(dotted(preset_settings("original"))))
    section, _, field = key.rpartition(".")
    default = setting(GenerateConfig(), key)
    (tmp_path / "run.json").write_text(json.dumps({section: {field: default}} if section else {}))
    from_file = from_argv("x", "--preset", "original", "--config", str(tmp_path / "run.json"))
    assert setting(from_file, key) == default
    from_set = from_argv("x", "--preset", "original", "--set", f"{key}={json.dumps(default)}")
    assert setting(from_set, key) == default
    assert from_argv("x", "--preset", "original", "--num-patches", "7").collage.num_patches == 7


def test_an_unknown_preset_is_one_line_before_anything_is_made(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", "x", "--preset", "orignal", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "no preset 'orignal': Did you mean 'original'? choose one of original" in err
    assert not out.exists()


def test_a_preset_is_a_copy_and_builds_a_valid_config():
    for name in PRESETS:
        values = preset_settings(name)
        config_files.build_config(GenerateConfig, values)  # raises on a stale key or value
        values.clear()
        assert preset_settings(name), name


def test_the_original_preset_reaches_the_run_folder_config(tmp_path):
    """A run records the preset's values, so resuming it or passing its config.json as
    --config reproduces it without the preset."""
    out = tmp_path / "run"
    argv = ["a red circle", "--preset", "original", "--steps", "0", "--size", "32"]
    argv += ["--num-patches", "3", "--population", "1"]
    assert main(["generate", *argv, "--out", str(out)]) == 0
    saved = GenerateConfig.from_dict(json.loads((out / "config.json").read_text()))
    assert saved == from_argv(*argv)
    again = from_argv("--config", str(out / "config.json"))
    assert again == saved
