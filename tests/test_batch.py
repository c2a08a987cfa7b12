"""Batch generation: one collage per prompt, one compiled program, failures recorded."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import pathlib

import numpy as np
import pytest
from PIL import Image
from test_evolution import EVOLVE, chunk_compilations, demo_resources, evolution_run

from clipclop_jax.cli.batch import add_batch_parser, config_from_args, run_batch
from clipclop_jax.cli.main import main
from clipclop_jax.runs import batch
from clipclop_jax.runs.batch import folder_names, generate_batch, read_prompts, slugify
from clipclop_jax.search.evolution import EvolutionConfig

# The settings of test_evolution's "none" runs: the same compiled program serves both files.
PLAIN = dataclasses.replace(EVOLVE, evolution=EvolutionConfig(method="none", frequency=10))
PROMPTS = ["a red circle", "red | ", "a blue circle"]  # the second one is malformed


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    out = tmp_path_factory.mktemp("batch")
    with chunk_compilations() as compiled:
        items = generate_batch(PROMPTS, PLAIN, out, resources=demo_resources())
    return out, items, list(compiled)


def test_one_folder_per_prompt_and_a_bad_prompt_loses_nothing(made):
    out, items, _ = made
    assert [item.prompt for item in items] == PROMPTS
    assert [item.ok for item in items] == [True, False, True]
    bad = items[1]
    assert bad.loss is None and bad.image is None
    assert not pathlib.Path(bad.folder).exists()  # no empty folder left behind
    assert bad.error.startswith("PromptError: ") and "\n" not in bad.error, bad.error
    for item in (items[0], items[2]):
        assert (pathlib.Path(item.folder) / "collage.png").is_file()
        assert pathlib.Path(item.folder).parent == out
        assert np.isfinite(item.loss) and item.seconds > 0
    assert [p.name for p in sorted(out.iterdir()) if p.is_dir()][0] == "000-a-red-circle"


def test_a_batch_prompt_gives_what_a_single_run_gives(made):
    _, items, _ = made
    single, _ = evolution_run("none", 0)  # same settings and seed, one generate() call
    assert items[0].loss == single.loss


def test_prompts_of_the_same_shape_share_one_compiled_program(made):
    _, _, compiled = made
    # At most one compilation (none if test_evolution compiled these settings first).
    assert len(compiled) <= 1, compiled


def test_summaries_list_every_prompt(made):
    out, items, _ = made
    with open(out / "summary.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["prompt"] for r in rows] == PROMPTS
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["loss"] == "" and rows[1]["error"].startswith("PromptError")
    assert float(rows[0]["loss"]) == pytest.approx(items[0].loss)
    assert rows[2]["image"].endswith("002-a-blue-circle/collage.png")
    document = json.loads((out / "summary.json").read_text())
    assert [p["status"] for p in document["prompts"]] == ["ok", "error", "ok"]
    assert "Traceback" in document["prompts"][1]["traceback"]
    assert "prompt" not in document["settings"]
    assert document["settings"]["population"] == 8
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp")]


@pytest.mark.parametrize(
    "text, slug",
    [
        ("A red circle", "a-red-circle"),
        ("a cat made of leaves:1 | blurry:-0.5", "a-cat-made-of-leaves-1-blurry-0-5"),
        ("Crème brûlée, à la française!", "creme-brulee-a-la-francaise"),
        ("../../etc/passwd", "etc-passwd"),
        ("猫", "prompt"),
        ("   ", "prompt"),
        ("word " * 30, "word-" * 8 + "word"),
    ],
)
def test_slugs_are_safe_folder_names(text, slug):
    assert slugify(text) == slug
    assert len(slug) <= batch.MAX_SLUG


def test_repeated_prompts_get_their_own_folders():
    names = folder_names(["same", "same", "other"])
    assert names == ["000-same", "001-same", "002-other"]
    assert folder_names(["x"] * 1001)[-1] == "1000-x"


def test_prompt_files_skip_blank_and_comment_lines(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# my prompts\n\na red circle\n  a blue square:1 | red:-0.5  \n\n")
    assert read_prompts(path) == ["a red circle", "a blue square:1 | red:-0.5"]
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(ValueError, match="holds no prompts"):
        read_prompts(tmp_path / "empty.txt")
    with pytest.raises(OSError):
        read_prompts(tmp_path / "missing.txt")


def test_no_prompts_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no prompts"):
        generate_batch([], PLAIN, tmp_path, resources=demo_resources())


def parse(argv):
    parser = argparse.ArgumentParser(prog="clipclop")
    add_batch_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


CLI_SETTINGS = [
    "--population=8",
    "--size=64",
    "--num-patches=16",
    "--steps=60",
    "--chunk-steps=20",
    "--evolution=none",
    "--evolution-frequency=10",
    "--output-size=32",
    "--lowres-size=32",
    "--highres-size=64",
    "--set",
    "optim.use_augmentations=false",
    "--set",
    "optim.learning_rate=0",
    "--quiet",
]


def test_cli_options_build_the_batch_settings(tmp_path):
    args = parse(["batch", "p.txt", "--out", str(tmp_path), *CLI_SETTINGS])
    config = config_from_args(args)
    assert dataclasses.replace(config, prompt=PLAIN.prompt) == PLAIN


def test_cli_batch_reports_failures_and_writes_the_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(batch, "load_resources", lambda config: demo_resources())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue circle\n:2\n")
    out = tmp_path / "out"
    code = run_batch(parse(["batch", str(prompts), "--out", str(out), *CLI_SETTINGS]))
    captured = capsys.readouterr()
    assert code == 1
    assert "1 of 2 prompts made collages" in captured.out
    assert captured.err.count("\n") == 1 and "prompt 2 ':2'" in captured.err
    assert (out / "000-a-blue-circle" / "collage.png").is_file()
    assert (out / "summary.csv").is_file() and (out / "summary.json").is_file()


# -- job arrays: --shard I/N, --merge ---------------------------------------------------------


@pytest.fixture(scope="module")
def sharded(tmp_path_factory, made):
    """The module's batch run as two shards of a job array, merged (the CLI)."""
    folder = tmp_path_factory.mktemp("sharded")
    prompts = folder / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = folder / "out"
    codes = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batch, "load_resources", lambda config: demo_resources())
        for shard in ("1/2", "0/2"):  # in any order, as a scheduler starts them
            args = parse(
                ["batch", str(prompts), "--out", str(out), "--shard", shard, *CLI_SETTINGS]
            )
            codes.append(run_batch(args))
    return prompts, out, codes


def test_shards_take_every_nth_prompt_and_merge_into_the_whole_batch(sharded, made, capsys):
    prompts, out, codes = sharded
    whole, items, _ = made
    assert codes == [1, 0]  # shard 1/2 holds the malformed prompt only
    shard0 = json.loads((out / "summary-shard-0-of-2.json").read_text())["prompts"]
    assert [p["index"] for p in shard0] == [0, 2]
    assert not (out / "summary.csv").exists()
    assert main(["batch", "--merge", "--out", str(out)]) == 1
    assert "2 of 3 prompts made collages" in capsys.readouterr().out
    merged = json.loads((out / "summary.json").read_text())["prompts"]
    assert [p["prompt"] for p in merged] == [p.strip() for p in PROMPTS]  # as read from a file
    assert [p["status"] for p in merged] == ["ok", "error", "ok"]
    # The same folders and collages as the batch run in one job.
    assert [p["loss"] for p in merged] == [items[0].loss, None, items[2].loss]
    for item in (items[0], items[2]):
        name = pathlib.Path(item.folder).name
        assert (out / name / "collage.png").read_bytes() == (
            whole / name / "collage.png"
        ).read_bytes()
    with Image.open(out / "contact-sheet.png") as sheet:
        assert sheet.size[0] == 2 * 128  # two collages side by side, captioned beneath


def test_a_shard_run_again_skips_its_finished_prompts(sharded, monkeypatch):
    prompts, out, _ = sharded

    def no_run(*args, **kwargs):
        raise AssertionError("a finished prompt ran again")

    monkeypatch.setattr(batch, "generate", no_run)
    monkeypatch.setattr(batch, "resume", no_run)
    monkeypatch.setattr(batch, "load_resources", lambda config: demo_resources())
    before = json.loads((out / "summary-shard-0-of-2.json").read_text())["prompts"]
    args = parse(["batch", str(prompts), "--out", str(out), "--shard", "0/2", *CLI_SETTINGS])
    assert run_batch(args) == 0
    after = json.loads((out / "summary-shard-0-of-2.json").read_text())["prompts"]
    assert [p["loss"] for p in after] == [p["loss"] for p in before]


@pytest.mark.parametrize("shard", ["2/2", "-1/2", "1/0", "a/b", "1/2/3", "3"])
def test_a_bad_shard_gets_one_line_before_any_work(tmp_path, capsys, shard):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    code = main(["batch", str(prompts), "--out", str(tmp_path / "out"), f"--shard={shard}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--shard" in err, err
    assert not (tmp_path / "out").exists()


def test_merging_names_the_shards_still_missing(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary-shard-1-of-3.json").write_text('{"settings": {}, "prompts": []}')
    assert main(["batch", "--merge", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "0/3, 2/3" in err, err
