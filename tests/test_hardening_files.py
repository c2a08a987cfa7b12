"""Files from outside are read safely and files of the user's are never touched: a pickled patch
file runs no code, a bad library or checkpoint is one clear line, --overwrite removes only what
a run wrote, and a run whose library moved resumes from its new place."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest

from clipclop_jax import (
    CollageConfig,
    GenerateConfig,
    OptimConfig,
    Resources,
    generate,
    load_perceptor,
)
from clipclop_jax.cli.main import main
from clipclop_jax.library import npz_reader
from clipclop_jax.library import patch_library as library_module
from clipclop_jax.library.file_formats import LIBRARY_FORMAT, save_library
from clipclop_jax.library.load import load_library
from clipclop_jax.library.npz_reader import load_library_subset
from clipclop_jax.library.patch_library import LibraryError, library_from_cutouts
from clipclop_jax.library.sources import open_sources
from clipclop_jax.runs import checkpoint, npz_checkpoint, run_folder
from clipclop_jax.runs.batch import generate_batch
from clipclop_jax.runs.generate import resume
from clipclop_jax.runs.interrupt import RunInterrupted
from clipclop_jax.runs.reblend import blend_run
from clipclop_jax.runs.resources import with_absolute_paths
from clipclop_jax.runs.settings import OutputConfig
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


def _disc(size=24, radius=9, colour=(200, 40, 30)):
    yy, xx = np.mgrid[:size, :size]
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2] = (*colour, 255)
    return rgba


def _one_line(error) -> str:
    text = str(error)
    assert "\n" not in text.strip(), text
    return text


@pytest.fixture(scope="module")
def perceptor():
    return load_perceptor("demo")


# -- 1. A pickled patch file builds numpy arrays and nothing else ----------------------------


class _Payload:
    """Pickles as a call that creates ``marker``: what a hostile patch file would do."""

    def __init__(self, call, marker):
        self.call, self.marker = call, str(marker)

    def __reduce__(self):
        if self.call == "system":
            return (os.system, (f"touch {self.marker}",))
        return (open, (self.marker, "w"))


def _evil_npy(folder, call="open"):
    marker = folder / f"pwned-{call}"
    patches = np.empty(2, dtype=object)
    patches[0] = np.transpose(_disc(), (1, 0, 2))  # a genuine patch first
    patches[1] = _Payload(call, marker)
    path = folder / f"evil-{call}.npy"
    np.save(path, patches, allow_pickle=True)
    return path, marker


@pytest.mark.parametrize("call", ["open", "system"])
def test_a_patch_file_that_pickles_code_is_refused_and_runs_nothing(tmp_path, call):
    path, marker = _evil_npy(tmp_path, call)
    with pytest.raises(LibraryError, match="never loads") as error:
        load_library(path, lowres_size=16, highres_size=16)
    assert str(path) in _one_line(error.value)
    with pytest.raises(LibraryError, match="never loads"):  # a library build stops at once
        open_sources([path])
    assert not marker.exists()


def test_the_cli_refuses_a_patch_file_that_pickles_code(tmp_path, capsys):
    path, marker = _evil_npy(tmp_path, "system")
    args = ["--patches", str(path), "--steps", "0", "--size", "32", "--quiet"]
    code = main(["generate", "x", "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "posix.system" in err or "os.system" in err or "nt.system" in err
    code = main(["patches", "build", str(path), "--out", str(tmp_path / "lib.npz"), "--quiet"])
    assert code == 2 and not (tmp_path / "lib.npz").exists()
    assert not marker.exists()


def test_original_object_arrays_load_whichever_pickle_protocol_wrote_them(tmp_path):
    patches = np.empty(3, dtype=object)
    patches[0] = np.transpose(_disc(30, 12), (1, 0, 2))  # [W, H, 4]
    patches[1] = np.zeros((20, 50, 3), np.uint8)
    patches[1][5:15, 5:45] = (10, 200, 10)
    patches[2] = np.full((7, 9, 3), 255, np.uint8)
    expected = None
    for protocol in (2, 3, 5):  # 2 stores bytes through _codecs.encode, 5 through _frombuffer
        path = tmp_path / f"p{protocol}.npy"
        with open(path, "wb") as handle:
            header = {"descr": "|O", "fortran_order": False, "shape": (3,)}
            np.lib.format.write_array_header_1_0(handle, header)
            pickle.dump(patches, handle, protocol=protocol)
        library = load_library(path, lowres_size=16, highres_size=32)
        assert library.num_patches == 3
        # Its visible part is 10 wide and 40 tall (black is transparent; width first).
        assert tuple(library.high.sizes[1]) == (30, 8)
        if expected is None:
            expected = library.fingerprint
        assert library.fingerprint == expected


# -- 7. Bad library arrays: one line naming the file and the cause, before resampling -------


def _library_arrays():
    library = library_from_cutouts([_disc(), _disc(colour=(0, 0, 255))], lowres_size=16)
    rgba, sizes = np.asarray(library.high.rgba), np.asarray(library.high.sizes)
    return rgba, sizes, np.asarray(library.names)


def _bad_npz(folder, name):
    rgba, sizes, names = _library_arrays()
    nan = rgba.astype(np.float32) / 255
    nan[0, 0, 0, 0] = np.nan
    arrays = {
        "nan": dict(rgba=nan),
        "float64": dict(rgba=rgba.astype(np.float64) / 255),
        "short_sizes": dict(sizes=sizes[:1]),
        "no_patches": dict(rgba=rgba[:0], sizes=sizes[:0], names=names[:0]),
        "flat": dict(rgba=rgba.reshape(2, -1)),
        "huge_size": dict(sizes=sizes * 100),
    }[name]
    path = folder / f"{name}.npz"
    values = dict(format=np.asarray(LIBRARY_FORMAT), rgba=rgba, sizes=sizes, names=names)
    np.savez(path, **{**values, **arrays})
    return path


BAD_NPZ = {
    "nan": "rgba is float32, not uint8",
    "float64": "rgba is float64, not uint8",
    "short_sizes": "sizes is int32\\[1, 2\\] but rgba holds 2 patches",
    "no_patches": "holds no patches",
    "flat": "rgba has shape",
    "huge_size": "outside \\[1, ",
}


@pytest.fixture
def no_resampling(monkeypatch):
    """Call it once the test's files exist: any resampling after that fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("patches were resampled before the library was checked")

    def forbid():
        monkeypatch.setattr(library_module, "square_patch", refuse)
        monkeypatch.setattr(npz_reader, "square_patch", refuse)

    return forbid


@pytest.mark.parametrize("name", sorted(BAD_NPZ))
def test_a_bad_library_npz_is_one_line_naming_file_and_cause(tmp_path, name, no_resampling):
    path = _bad_npz(tmp_path, name)
    no_resampling()
    for load in (load_library, load_library_subset):  # whole, and streamed (what runs use)
        with pytest.raises(LibraryError, match=BAD_NPZ[name]) as error:
            load(path, lowres_size=16, highres_size=32)
        assert str(path) in _one_line(error.value) and "clipclop patches build" in str(error.value)


def test_a_damaged_library_npz_is_one_line_naming_file_and_cause(tmp_path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 255, (6, 30, 30, 4), dtype=np.uint8)
    noise[..., 3] = 255
    path = tmp_path / "lib.npz"
    save_library(path, library_from_cutouts(list(noise), lowres_size=16, highres_size=64))
    with zipfile.ZipFile(path) as archive:
        member = archive.getinfo("rgba.npy")
    data = bytearray(path.read_bytes())
    start = member.header_offset + 30 + len(member.filename) + len(member.extra)
    middle = start + member.compress_size // 2
    data[middle : middle + 64] = bytes(64)  # a flipped stretch in the middle of the squares
    path.write_bytes(bytes(data))
    with pytest.raises(LibraryError, match="rgba is damaged") as error:
        load_library_subset(path, lowres_size=16, highres_size=32)
    assert str(path) in _one_line(error.value)


def _bad_npy(folder, name):
    path = folder / f"{name}.npy"
    if name == "zero_d":
        np.save(path, np.asarray(7))
        return path
    patches = np.empty(1 if name != "empty" else 0, dtype=object)
    if name == "nan":
        patches[0] = np.full((8, 8, 3), np.nan)
    elif name == "out_of_range":
        patches[0] = np.full((8, 8, 3), 300)
    elif name == "wrong_shape":
        patches[0] = np.zeros((8, 8), np.uint8)
    elif name == "not_an_array":
        patches[0] = "a patch"
    np.save(path, patches, allow_pickle=True)
    return path


BAD_NPY = {
    "zero_d": "holds a single int64 value, not patches",
    "empty": "holds no patches",
    "nan": "patch 0 is float64 with NaN",
    "out_of_range": "patch 0 has values outside 0-255",
    "wrong_shape": "patch 0 has shape \\[8, 8\\]",
    "not_an_array": "patch 0 holds a str",
}


@pytest.mark.parametrize("name", sorted(BAD_NPY))
def test_a_bad_original_patch_file_is_one_line_naming_file_and_cause(tmp_path, name, no_resampling):
    path = _bad_npy(tmp_path, name)
    no_resampling()
    with pytest.raises(LibraryError, match=BAD_NPY[name]) as error:
        load_library(path, lowres_size=16, highres_size=32)
    assert str(path) in _one_line(error.value)


# -- 9. Checkpoints: our own message; a run whose library moved resumes from its new place --


def test_a_checkpoint_holding_a_pickle_is_refused_with_our_own_advice(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path = folder / "step-000000010.npz"
    meta = json.dumps({"format": npz_checkpoint.FORMAT, "step": 10, "paths": ["[0]"]})
    np.savez(path, meta=np.asarray(meta), leaf_0000=np.asarray([{"a": 1}], object))
    with pytest.raises(ValueError, match="delete it or resume from an older checkpoint") as error:
        checkpoint.load_checkpoint(path)
    message = _one_line(error.value)
    assert str(path) in message and "allow_pickle" not in message
    with pytest.raises(ValueError, match="no readable checkpoint") as error:
        checkpoint.load_latest(tmp_path)
    assert "allow_pickle" not in _one_line(error.value)


def test_a_saved_config_holds_absolute_paths_and_builtin_names(tmp_path, monkeypatch, perceptor):
    monkeypatch.setattr("clipclop_jax.runs.resources.load_guides", lambda name: perceptor)
    monkeypatch.chdir(tmp_path)
    save_library("lib.npz", library_from_cutouts([_disc()], lowres_size=32, highres_size=32))
    generate(dataclasses.replace(TINY, patches="lib.npz"), out_dir="run")
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["patches"] == str(tmp_path / "lib.npz") and saved["model"] == "demo"
    assert checkpoint.load_latest("run").config["patches"] == str(tmp_path / "lib.npz")
    assert with_absolute_paths(TINY) == TINY  # "shapes", "demo", "black" stay names


def _stop_after_first_chunk():
    calls = []

    def should_stop():
        calls.append(None)
        return len(calls) > 1

    return should_stop


def test_a_run_whose_library_moved_resumes_from_the_new_place(
    tmp_path, monkeypatch, perceptor, capsys
):
    monkeypatch.setattr(
        "clipclop_jax.runs.resources.load_guides", lambda name: perceptor
    )  # one compile
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    cutouts = [_disc(colour=c) for c in ((220, 30, 30), (30, 30, 220), (30, 200, 30))]
    save_library(old / "lib.npz", library_from_cutouts(cutouts, lowres_size=32, highres_size=32))
    config = dataclasses.replace(
        TINY,
        patches=str(old / "lib.npz"),
        optim=dataclasses.replace(TINY.optim, steps=20),
        output=OutputConfig(checkpoint_every=0),
    )
    with pytest.raises(RunInterrupted):
        generate(config, out_dir=tmp_path / "run", should_stop=_stop_after_first_chunk())
    shutil.move(old, new)

    with pytest.raises(ValueError, match="--patches PATH") as error:
        resume(tmp_path / "run")
    assert str(old / "lib.npz") in _one_line(error.value)
    assert main(["resume", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--patches PATH" in err
    with pytest.raises(ValueError, match="--patches PATH"):
        blend_run(tmp_path / "run")

    other = tmp_path / "other.npz"
    save_library(other, library_from_cutouts(cutouts[:2], lowres_size=32, highres_size=32))
    with pytest.raises(ValueError, match="the patch library differs"):
        resume(tmp_path / "run", patches=other)
    assert checkpoint.load_latest(tmp_path / "run").step == 10  # refusing changed nothing

    resumed = resume(tmp_path / "run", patches=new / "lib.npz")
    moved = dataclasses.replace(config, patches=str(new / "lib.npz"))
    reference = generate(moved, out_dir=tmp_path / "reference")
    np.testing.assert_array_equal(resumed.history, reference.history)
    np.testing.assert_array_equal(resumed.image, reference.image)
    final, expected = (checkpoint.load_latest(tmp_path / d) for d in ("run", "reference"))
    assert final.step == expected.step == 20
    for got, want in zip(final.leaves, expected.leaves, strict=True):
        np.testing.assert_array_equal(got, want)
    assert final.config["patches"] == str(new / "lib.npz")  # the next resume needs no option


def test_a_run_whose_model_folder_moved_resumes_with_model(tmp_path, monkeypatch, capsys):
    from clipclop_jax.guidance.perceptor import demo_model_path

    shutil.copytree(demo_model_path(), tmp_path / "clip")
    monkeypatch.chdir(tmp_path)
    generate(dataclasses.replace(TINY, model="clip"), out_dir="run")  # a finished run
    assert checkpoint.load_latest("run").config["model"] == str(tmp_path / "clip")
    shutil.move(tmp_path / "clip", tmp_path / "moved")
    assert main(["resume", "run", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--model PATH" in err
    assert main(["resume", "run", "--model", "moved", "--quiet"]) == 0
    assert checkpoint.load_latest("run").config["model"] == str(tmp_path / "moved")


# -- 2. --overwrite removes what a run wrote, and nothing of the user's ----------------------


USER_FILES = [
    "my-holiday.png",
    "collage-holiday.png",
    "notes.json",
    ".tmp-mine",
    "frames/my-holiday.png",
    "checkpoints/README.txt",
    "checkpoints/step-1.npz.bak",
    "checkpoints/step_000000050/mine.txt",  # an orbax-like name, but not orbax's content
    "tiles/README.txt",
    "tiles/r0c0/notes.txt",
    "tiles/r0c0/frames/mine.png",
    "tiles/mine/collage.png",
    "params.npz.bak",
]
RUN_FILES = [
    "config.json",
    "collage.png",
    "collage-poisson.png",
    "params.npz",
    "evolution.gif",
    "evolution.mp4",
    ".tmp-abcd1234collage.png",
    "checkpoints/step-000000010.npz",
    "checkpoints/step_000000010/state/manifest.ocdbt",
    "checkpoints/step_000000010/meta/metadata",
    "checkpoints/step_000000010/_CHECKPOINT_METADATA",
    "checkpoints/step_000000020.orbax-checkpoint-tmp/state/d/0123",
    "checkpoints/.deleted/step_000000001/state/manifest.ocdbt",
    "tiles/r0c0/checkpoints/step_000000010/commit_success.txt",
    "frames/step-000000010.png",
    "tiles/r0c0/collage.png",
    "tiles/r0c0/checkpoints/step-000000010.npz",
    "tiles/r0c1/params.npz",
    "tiles/r0c1/frames/step-000000010.png",
]


def _fill(folder, names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"old")


def _files(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def test_overwrite_removes_only_the_files_a_run_wrote(tmp_path):
    _fill(tmp_path, USER_FILES + RUN_FILES)
    run_folder.prepare_output_folder(tmp_path, overwrite=True)
    assert _files(tmp_path) == sorted(USER_FILES)
    assert not (tmp_path / "tiles" / "r0c1").exists()  # emptied run folders go
    assert not (tmp_path / "tiles" / "r0c0" / "checkpoints").exists()


@pytest.mark.parametrize("tiles", [None, "2x1"])
def test_generate_and_tiled_overwrite_keep_the_users_files(
    tmp_path, tiles, perceptor, monkeypatch, capsys
):
    monkeypatch.setattr("clipclop_jax.runs.resources.load_guides", lambda name: perceptor)
    _fill(tmp_path, USER_FILES + RUN_FILES)
    argv = ["generate", "a red circle", "--out", str(tmp_path), "--overwrite", "--quiet"]
    argv += ["--steps", "0", "--size", "32", "--output-size", "32", "--num-patches", "4"]
    argv += ["--tiles", tiles] if tiles else []
    assert main(argv) == 0, capsys.readouterr().err
    for name in USER_FILES:
        assert (tmp_path / name).read_bytes() == b"old", name
    for name in RUN_FILES:  # gone, or written again by this run
        assert not (tmp_path / name).exists() or (tmp_path / name).read_bytes() != b"old", name


def test_batch_overwrite_keeps_the_users_files(tmp_path, perceptor):
    resources = Resources(perceptor, load_library("shapes", lowres_size=32, highres_size=32))
    folder = tmp_path / "000-a-red-circle"
    _fill(folder, USER_FILES + RUN_FILES)
    items = generate_batch(["a red circle"], TINY, tmp_path, resources=resources, overwrite=True)
    assert items[0].ok, items[0].error
    for name in USER_FILES:
        assert (folder / name).read_bytes() == b"old", name
    assert not (folder / "evolution.gif").exists()
