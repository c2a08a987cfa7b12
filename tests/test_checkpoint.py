"""Runs on disk: checkpoints survive crashes, output folders are checked before a run,
resuming refuses another library or model, and frames become a GIF and an MP4."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from clipclop_jax import (
    CollageConfig,
    GenerateConfig,
    OptimConfig,
    Resources,
    generate,
    load_library,
    load_perceptor,
)
from clipclop_jax.cli.main import main
from clipclop_jax.runs import checkpoint, run_folder, video
from clipclop_jax.runs.generate import resume
from clipclop_jax.runs.resources import model_fingerprint
from clipclop_jax.runs.setup import state_template
from clipclop_jax.search import sharding
from clipclop_jax.search.evolution import EvolutionConfig

TINY = GenerateConfig(
    prompt="a red circle",
    population=2,
    output_size=32,
    lowres_size=32,
    highres_size=32,
    collage=CollageConfig(canvas_height=32, canvas_width=32, num_patches=8),
    optim=OptimConfig(steps=0, chunk_steps=10, num_crops=2),
    evolution=EvolutionConfig(method="none"),
)


def fresh_state(config: GenerateConfig, seed: int = 0):
    """A run state of the config's shapes filled with random values (no JAX programs)."""
    rng = np.random.default_rng(seed)

    def leaf(spec):
        if jax.dtypes.issubdtype(spec.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        return (rng.random(spec.shape) * 10).astype(spec.dtype)

    return jax.tree.map(leaf, state_template(config))


def save(out_dir, state, step, **kwargs):
    history = np.full((step, state.losses.shape[0]), 0.5, np.float32)
    return checkpoint.save_checkpoint(
        out_dir,
        state._replace(step=np.int32(step)),
        history,
        config=TINY.to_dict(),
        library_fingerprint="lib",
        model_fingerprint="model",
        **kwargs,
    )


def test_a_checkpoint_restores_every_array_and_the_key(tmp_path):
    state = fresh_state(TINY)
    state = state._replace(key=jax.random.fold_in(state.key, 7), losses=np.float32([0.1, 0.2]))
    path = save(tmp_path, state, 30)
    assert path == checkpoint.latest_checkpoint(tmp_path)
    saved = checkpoint.load_checkpoint(path)
    assert saved.step == 30 and saved.history.shape == (30, 2)
    assert GenerateConfig.from_dict(saved.config) == TINY
    restored = checkpoint.restore_state(saved, state_template(TINY))
    expected = state._replace(step=np.int32(30))
    np.testing.assert_array_equal(jax.random.key_data(restored.key), jax.random.key_data(state.key))
    for got, want in zip(
        jax.tree.leaves(restored._replace(key=None)),
        jax.tree.leaves(expected._replace(key=None)),
        strict=True,
    ):
        assert got.dtype == np.asarray(want).dtype
        np.testing.assert_array_equal(got, want)


def test_a_checkpoint_restores_straight_into_a_meshs_shardings(tmp_path):
    state = fresh_state(TINY)
    saved = checkpoint.load_checkpoint(save(tmp_path, state, 10))
    host = checkpoint.restore_state(saved, state_template(TINY))
    for devices in (2, 1):
        mesh = sharding.population_mesh(devices)
        placed = checkpoint.restore_state(saved, state_template(TINY), mesh=mesh)
        wanted = sharding.run_state_shardings(placed, mesh)
        for got, want, where in zip(
            jax.tree.leaves(placed._replace(key=jax.random.key_data(placed.key))),
            jax.tree.leaves(host._replace(key=jax.random.key_data(host.key))),
            jax.tree.leaves(wanted),
            strict=True,
        ):
            assert got.sharding.is_equivalent_to(where, got.ndim)
            np.testing.assert_array_equal(got, want)
    assert len(placed.population.params.translation.sharding.device_set) == 1
    split = checkpoint.restore_state(saved, state_template(TINY), mesh=sharding.population_mesh(2))
    assert len(split.population.params.translation.addressable_shards) == 2


def test_restore_refuses_a_state_of_another_shape(tmp_path):
    saved = checkpoint.load_checkpoint(save(tmp_path, fresh_state(TINY), 10))
    other = dataclasses.replace(TINY, collage=dataclasses.replace(TINY.collage, num_patches=9))
    with pytest.raises(ValueError, match=r"population\.params\.translation is float32\[2, 8, 2\]"):
        checkpoint.restore_state(saved, state_template(other))


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    state = fresh_state(TINY)
    for step in (10, 20, 30, 40):
        save(tmp_path, state, step, keep=2)
    names = [os.path.basename(p) for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["step_000000030", "step_000000040"]


def test_a_step_saved_again_replaces_its_checkpoint(tmp_path):
    """A studio edit rewrites the checkpoint of the step it was made at."""
    state = fresh_state(TINY)
    save(tmp_path, state, 10, extra_meta={"edits_applied": 1})
    changed = state._replace(losses=np.float32([7.0, 8.0]))
    save(tmp_path, changed, 10, extra_meta={"edits_applied": 2})
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["step_000000010"]
    saved = checkpoint.load_latest(tmp_path)
    assert checkpoint.extra_meta(saved) == {"edits_applied": 2}
    restored = checkpoint.restore_state(saved, state_template(TINY))
    np.testing.assert_array_equal(restored.losses, [7.0, 8.0])


def test_a_write_killed_half_way_leaves_the_previous_checkpoint_whole(tmp_path):
    state = fresh_state(TINY)
    save(tmp_path, state, 10)
    # What a kill during orbax's write leaves: the next step's temporary folder, half full.
    torn = tmp_path / "checkpoints" / "step_000000020.orbax-checkpoint-tmp"
    (torn / "state").mkdir(parents=True)
    (torn / "state" / "manifest.ocdbt").write_bytes(b"torn")
    assert checkpoint.load_latest(tmp_path).step == 10
    save(tmp_path, state, 20)  # the run goes on past it
    assert checkpoint.load_latest(tmp_path).step == 20


def test_an_unreadable_newest_checkpoint_falls_back_to_the_one_before(tmp_path):
    state = fresh_state(TINY)
    save(tmp_path, state, 10)
    shutil.copytree(tmp_path / "checkpoints" / "step_000000010", tmp_path / "step")
    save(tmp_path, state, 20)
    for item in (tmp_path / "checkpoints" / "step_000000020" / "state").iterdir():
        if item.is_file():
            item.write_bytes(b"torn")
    assert checkpoint.load_latest(tmp_path).step == 10
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        checkpoint.load_checkpoint(tmp_path / "checkpoints" / "step_000000020")
    checkpoint.discard_newer(tmp_path, 10)  # what resume does before it writes new ones
    assert os.listdir(tmp_path / "checkpoints") == ["step_000000010"]
    # An old run's .npz beside the new folders: listed by step, and unreadable ones too.
    (tmp_path / "checkpoints" / "step-000000020.npz").write_bytes(b"PK\x03\x04 torn")
    assert checkpoint.load_latest(tmp_path).step == 10
    checkpoint.discard_newer(tmp_path, 10)
    assert os.listdir(tmp_path / "checkpoints") == ["step_000000010"]


KEEP_SAVING = textwrap.dedent(
    """
    import sys
    import jax, numpy as np
    from clipclop_jax.runs.checkpoint import save_checkpoint
    from clipclop_jax.search.optimise import RunState

    # A run state with 4 MB of incompressible optimiser state: each write takes a while.
    big = np.random.default_rng(0).random(1_000_000, np.float32)
    state = RunState(np.zeros(3), big, jax.random.key(0), np.int32(0), np.zeros(2), 0, 0.0,
                     False, False)
    for step in range(1, 100000):
        save_checkpoint(sys.argv[1], state._replace(step=np.int32(step)), np.zeros((0, 2)),
                        config={}, library_fingerprint="", model_fingerprint="", keep=3)
    """
)


def test_a_kill_at_any_instant_leaves_readable_checkpoints(tmp_path):
    """A real process writing checkpoints of a few MB back to back, killed with SIGKILL."""
    process = subprocess.Popen([sys.executable, "-c", KEEP_SAVING, str(tmp_path)])
    try:
        deadline = time.monotonic() + 120
        while len(checkpoint.list_checkpoints(tmp_path)) < 3:
            assert process.poll() is None, "the writer died"
            assert time.monotonic() < deadline, "no checkpoints appeared"
            time.sleep(0.02)
        time.sleep(0.123)  # somewhere inside a write
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    files = checkpoint.list_checkpoints(tmp_path)
    assert files
    for path in files:  # every checkpoint the folder lists reads whole
        assert checkpoint.load_checkpoint(path).leaves[1].shape == (1_000_000,)


def test_model_fingerprint_follows_the_weights():
    params = {"a": np.arange(6.0).reshape(2, 3), "b": {"c": np.ones(4, np.float32)}}
    same = {"a": np.arange(6.0).reshape(2, 3), "b": {"c": np.ones(4, np.float32)}}
    changed = {"a": np.arange(6.0).reshape(2, 3), "b": {"c": np.full(4, 1.5, np.float32)}}
    assert checkpoint.model_fingerprint(params) == checkpoint.model_fingerprint(same)
    assert checkpoint.model_fingerprint(params) != checkpoint.model_fingerprint(changed)


def test_an_existing_output_folder_is_never_silently_overwritten(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "collage.png").write_bytes(b"old")
    (out / "checkpoints").mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(run_folder.OutputFolderError, match="already exists and is not empty"):
        run_folder.prepare_output_folder(out)
    assert (out / "collage.png").read_bytes() == b"old"
    run_folder.prepare_output_folder(out, overwrite=True)
    assert sorted(os.listdir(out)) == ["notes.txt"]  # only the old run's files go
    run_folder.prepare_output_folder(tmp_path / "empty")  # new or empty folders are fine
    run_folder.prepare_output_folder(tmp_path / "empty")


@pytest.fixture(scope="module")
def resources():
    # The library cache the CLI uses: built once, then read in milliseconds.
    library = load_library("shapes", lowres_size=32, highres_size=64)
    return Resources(load_perceptor("demo"), library)


def test_problems_with_the_output_folder_stop_the_run_before_it_loads(tmp_path, monkeypatch):
    def no_loading(config):
        raise AssertionError("resources loaded before the folder was checked")

    monkeypatch.setattr("clipclop_jax.runs.generate.load_resources", no_loading)
    (tmp_path / "file").write_text("x")
    with pytest.raises(run_folder.OutputFolderError, match="cannot write to"):
        generate(TINY, out_dir=tmp_path / "file" / "run")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(run_folder.OutputFolderError, match="cannot write to"):
            generate(TINY, out_dir=locked / "run")

    usage = run_folder.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(run_folder.OutputFolderError, match=r"has 0\.0 MiB free but this run"):
        generate(TINY, out_dir=tmp_path / "full")


def test_main_reports_a_full_disk_in_one_line(tmp_path, monkeypatch, capsys):
    usage = run_folder.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda path: usage._replace(free=0))
    code = main(["generate", "a red circle", "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "free but this run needs" in err


def test_resume_refuses_another_library_or_model(resources, tmp_path):
    perceptor, library = resources.perceptor, resources.library
    checkpoint.save_checkpoint(
        tmp_path,
        fresh_state(TINY)._replace(step=np.int32(0)),
        np.zeros((0, 2)),
        config=TINY.to_dict(),
        library_fingerprint=library.fingerprint,
        model_fingerprint=model_fingerprint(perceptor),
    )
    other_library = Resources(perceptor, library.subset(range(library.num_patches - 1)))
    with pytest.raises(ValueError, match="the patch library differs from the one this run"):
        resume(tmp_path, resources=other_library)
    weights = jax.tree.map(lambda w: w * 1.01, perceptor.params)
    other_model = Resources(dataclasses.replace(perceptor, params=weights), library)
    with pytest.raises(ValueError, match="the CLIP model differs from the one this run"):
        resume(tmp_path, resources=other_model)
    assert checkpoint.load_latest(tmp_path).step == 0  # refusing leaves the run as it was


def test_resume_of_a_folder_without_a_run_says_so(tmp_path, capsys):
    code = main(["resume", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "has no checkpoint to resume from" in err


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # imageio's ffmpeg reader
def test_frames_become_a_gif_and_an_mp4(tmp_path):
    import imageio.v2 as imageio
    import imageio.v3 as iio

    rng = np.random.default_rng(0)
    for step in (30, 10, 20):
        video.save_frame(tmp_path / "frames", step, rng.random((33, 47, 3)))
    frames = video.list_frames(tmp_path / "frames")
    assert [os.path.basename(f) for f in frames] == [
        "step-000000010.png",
        "step-000000020.png",
        "step-000000030.png",
    ]
    video.write_gif(tmp_path / "evolution.gif", frames, fps=5)
    video.write_mp4(tmp_path / "evolution.mp4", frames, fps=5)
    assert iio.imread(tmp_path / "evolution.gif", index=None).shape == (3, 33, 47, 3)
    with imageio.get_reader(tmp_path / "evolution.mp4", format="FFMPEG") as reader:
        assert reader.count_frames() == 3
        assert tuple(reader.get_meta_data()["size"]) == (48, 34)  # padded to even sides
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp")]


def test_missing_video_writers_are_reported_before_the_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    with pytest.raises(
        ValueError, match=r"MP4 output needs imageio-ffmpeg .*clipclop-jax\[video\]"
    ):
        video.check_video_support(gif=False, mp4=True)
    video.check_video_support(gif=True, mp4=False)
