"""Patch maker: sources, curation, selection, the .npz it writes, bad input, bounded memory."""

from __future__ import annotations

import argparse
import os
import tracemalloc

import numpy as np
import pytest
from PIL import Image

skimage_data = pytest.importorskip("skimage.data")

from clipclop_jax.cli import patches as cli_patches  # noqa: E402
from clipclop_jax.library import contact_sheet, curation  # noqa: E402
from clipclop_jax.library import maker as patch_maker  # noqa: E402
from clipclop_jax.library.file_formats import LIBRARY_FORMAT, save_library  # noqa: E402
from clipclop_jax.library.load import load_library  # noqa: E402
from clipclop_jax.library.patch_library import SourceError  # noqa: E402
from clipclop_jax.library.sources import open_sources, parse_tfds  # noqa: E402

SMALL = dict(side=32, dedupe_threshold=0.0, min_width=4, min_height=4, min_coverage=0.0)


def _square(colour, size=48, noise=0, seed=0):
    rng = np.random.default_rng(seed)
    image = np.full((size, size, 3), colour, np.int16) + rng.integers(
        -noise, noise + 1, (size, size, 3)
    )
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """skimage photos (as JPEG and PNG), a corrupt PNG and a text file."""
    folder = tmp_path_factory.mktemp("photos")
    for name in ("coffee", "chelsea", "rocket"):
        Image.fromarray(getattr(skimage_data, name)()).save(folder / f"{name}.jpg", quality=90)
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def built(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("built") / "lib.npz"
    report = patch_maker.build_library(photos, out, preview=out.with_suffix(".png"))
    return report, out


def test_built_library_round_trips_into_load_library(built):
    report, out = built
    library = load_library(out, lowres_size=32, highres_size=64)
    assert report.count == library.num_patches >= 10
    assert library.low.rgba.shape == (report.count, 32, 32, 4)
    with np.load(out) as data:
        assert str(data["format"]) == LIBRARY_FORMAT
        assert data["rgba"].shape == (report.count, 256, 256, 4)
        assert data["rgba"].dtype == np.uint8 and data["sizes"].dtype == np.int32
        assert tuple(str(n) for n in data["names"]) == library.names
        # Each patch fills its square but for the transparent outer ring.
        assert (data["sizes"].max(axis=1) == 254).all()
        assert data["rgba"][:, 0, :, 3].max() == 0 and data["rgba"][:, :, -1, 3].max() == 0
    assert all("#" in n for n in library.names)  # several superpixel cut-outs per photo


def test_unreadable_files_are_skipped_and_listed(photos, built):
    report, _ = built
    skipped = dict(report.skipped)
    broken, notes = os.path.join(photos.name, "broken.png"), os.path.join(photos.name, "notes.txt")
    assert set(skipped) == {broken, notes}
    assert "Pillow" in skipped[broken] and skipped[notes] == "not an image file"
    assert report.images == 5


def test_contact_sheet_shows_every_patch(built):
    report, out = built
    height, width, _ = contact_sheet.sheet_shape(report.count, 64)
    with Image.open(report.preview) as sheet:
        assert sheet.size == (width, height) and sheet.mode == "RGB"
    again = out.with_name("again.png")
    assert contact_sheet.library_contact_sheet(out, again) == report.count
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(report.preview)))


def test_subset_loading_matches_load_library(built):
    _, out = built
    for relative in (False, True):
        full = load_library(out, lowres_size=16, highres_size=48, keep_relative_size=relative)
        indices = [5, 0, 3]
        part = patch_maker.load_library_subset(
            out, indices, lowres_size=16, highres_size=48, keep_relative_size=relative
        )
        expected = full.subset(indices)
        assert part.fingerprint == expected.fingerprint and part.names == expected.names
        for mine, theirs in zip(
            (*part.low, *part.high), (*expected.low, *expected.high), strict=True
        ):
            np.testing.assert_array_equal(mine, theirs)
    # A library written by library.save_library (np.savez_compressed) reads the same way.
    saved = out.with_name("saved.npz")
    save_library(saved, load_library(out, lowres_size=16, highres_size=64))
    again = patch_maker.load_library_subset(saved, [2, 1], lowres_size=16, highres_size=64)
    assert (
        again.fingerprint
        == load_library(saved, lowres_size=16, highres_size=64).subset([2, 1]).fingerprint
    )
    whole = patch_maker.load_library_subset(out, lowres_size=16, highres_size=48)
    assert whole.fingerprint == load_library(out, lowres_size=16, highres_size=48).fingerprint
    assert patch_maker.load_library_subset(out, max_patches=4, seed=1).num_patches == 4


def test_near_duplicates_are_removed(tmp_path):
    coffee = skimage_data.coffee()
    Image.fromarray(coffee).save(tmp_path / "a.jpg", quality=95)
    Image.fromarray(coffee[::2, ::2]).save(tmp_path / "b_small_copy.jpg", quality=60)
    Image.fromarray(skimage_data.chelsea()).save(tmp_path / "c.jpg")
    kept = patch_maker.build_library(tmp_path, tmp_path / "out.npz", segmentation="whole")
    assert kept.count == 2 and kept.rejected == {"duplicate": 1}
    every = patch_maker.build_library(
        tmp_path, tmp_path / "all.npz", segmentation="whole", dedupe_threshold=0
    )
    assert every.count == 3


def _varied_stream():
    """30 near-identical reds (above the dedupe distance of each other) and 6 other colours."""
    for i in range(30):
        yield f"red{i}", _square((200, 30, 30), noise=40, seed=i)
    for colour in (
        (20, 200, 30),
        (30, 30, 220),
        (240, 240, 240),
        (10, 10, 10),
        (230, 200, 20),
        (150, 20, 200),
    ):
        yield f"{colour}", _square(colour)


def _mean_distance(path):
    with np.load(path) as data:
        thumbs = np.stack([curation.thumbnail(s) for s in data["rgba"]])
    pairs = np.sqrt(((thumbs[:, None] - thumbs[None]) ** 2).mean(-1))
    return pairs[np.triu_indices(len(thumbs), 1)].mean()


def test_max_patches_with_random_and_diverse_selection(tmp_path):
    options = dict(SMALL, segmentation="whole", max_patches=6)
    rand = patch_maker.build_library(_varied_stream(), tmp_path / "r.npz", **options)
    diverse = patch_maker.build_library(
        _varied_stream(), tmp_path / "d.npz", selection="diverse", **options
    )
    assert rand.count == diverse.count == 6
    assert rand.rejected == diverse.rejected == {"not selected": 30}
    with np.load(tmp_path / "d.npz") as data:
        names = [str(n) for n in data["names"]]
    assert sum(not n.startswith("red") for n in names) >= 5
    assert _mean_distance(tmp_path / "d.npz") > 1.5 * _mean_distance(tmp_path / "r.npz")


def test_random_selection_is_a_uniform_sample(tmp_path):
    first = last = 0
    trials = 150
    for seed in range(trials):
        store = curation.SlotStore(
            tmp_path / "slots.bin",
            8,
            capacity=5,
            selection="random",
            dedupe_threshold=0,
            rng=np.random.default_rng(seed),
        )
        for i in range(20):
            store.offer(np.full((8, 8, 4), i, np.uint8), (6, 6), f"p{i}")
        store.finish()
        names = {store.name(s) for s in store.order()}
        first, last = first + ("p0" in names), last + ("p19" in names)
        store.close()
    assert abs(first / trials - 0.25) < 0.1 and abs(last / trials - 0.25) < 0.1


def test_size_aspect_and_coverage_filters(tmp_path):
    sliver = np.zeros((64, 64, 4), np.uint8)
    sliver[np.arange(64), np.arange(64)] = 255  # a thin diagonal: sparse in its box
    sources = [
        ("tiny", _square((200, 0, 0), size=10)),
        ("long", np.full((20, 200, 3), 120, np.uint8)),
        ("big", _square((0, 200, 0), size=300)),
        ("sliver", sliver),
        ("fine", _square((0, 0, 200), size=64)),
    ]
    report = patch_maker.build_library(
        sources, tmp_path / "f.npz", segmentation="alpha", side=32, max_size=200
    )
    assert report.count == 1
    assert report.rejected == {"too small": 1, "too elongated": 1, "too large": 1, "too sparse": 1}


def test_brightness_normalisation(tmp_path):
    dark = _square((40, 60, 80), noise=5)
    report = patch_maker.build_library(
        [("dark", dark)],
        tmp_path / "n.npz",
        segmentation="whole",
        normalise_brightness=True,
        side=32,
    )
    with np.load(report.out) as data:
        visible = data["rgba"][0][data["rgba"][0, ..., 3] == 255]
    assert visible[:, :3].max() >= 250 and visible[:, 2].mean() > 2 * 80


def test_odd_arrays_are_skipped_and_listed(tmp_path):
    sources = [
        ("flat", np.zeros(7, np.uint8)),
        ("five_channels", np.zeros((8, 8, 5), np.uint8)),
        ("complex", np.zeros((8, 8, 3), np.complex64)),
        ("grey_float", np.linspace(0, 1, 48 * 48).reshape(48, 48)),
    ]
    report = patch_maker.build_library(sources, tmp_path / "o.npz", segmentation="whole", side=16)
    assert report.count == 1
    assert [name for name, _ in report.skipped] == ["flat", "five_channels", "complex"]


def test_original_npy_patch_files_are_a_source(tmp_path):
    patches = np.empty(2, object)
    wide = np.zeros((60, 30, 3), np.uint8)  # [W, H, 3]: 60 wide, 30 high
    wide[5:55, 5:25] = (200, 100, 50)  # black border is transparent
    patches[0], patches[1] = wide, np.full((40, 40, 4), 255, np.uint8)
    np.save(tmp_path / "animals.npy", patches, allow_pickle=True)
    report = patch_maker.build_library(tmp_path / "animals.npy", tmp_path / "a.npz", side=32)
    with np.load(report.out) as data:
        assert [str(n) for n in data["names"]] == ["animals.npy#0", "animals.npy#1"]
        height, width = data["sizes"][0]
    assert width > 2 * height - 4  # width first in the file, 50 x 20 visible


def test_a_library_can_be_recurated(built, tmp_path):
    report, out = built
    again = patch_maker.build_library(out, tmp_path / "few.npz", max_patches=3, seed=2)
    assert again.count == 3 and again.images == report.count


def test_failure_mid_build_leaves_nothing_at_out(photos, tmp_path):
    out = tmp_path / "lib.npz"
    out.write_bytes(b"the previous library")

    def fail(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        patch_maker.build_library(photos, out, progress_fn=fail, preview=tmp_path / "p.png")
    assert out.read_bytes() == b"the previous library"
    assert os.listdir(tmp_path) == ["lib.npz"]
    fresh = tmp_path / "new" / "lib.npz"
    with pytest.raises(patch_maker.BuildError, match="no patch survived"):
        patch_maker.build_library(photos, fresh, min_width=5000)
    assert os.listdir(fresh.parent) == []


@pytest.mark.parametrize("target", ["out", "preview"])
def test_a_folder_as_destination_is_refused_before_the_build(photos, tmp_path, target):
    folder = tmp_path / "already-here.npz"
    folder.mkdir()
    (folder / "mine.txt").write_text("keep me")
    out = folder if target == "out" else tmp_path / "lib.npz"
    preview = folder if target == "preview" else None
    seen = []
    with pytest.raises(patch_maker.BuildError, match=f"{target} '{folder}' is a folder"):
        patch_maker.build_library(
            photos, out, preview=preview, progress_fn=lambda done, total: seen.append(done)
        )
    assert seen == []  # no image was read
    assert sorted(os.listdir(tmp_path)) == ["already-here.npz"]
    assert os.listdir(folder) == ["mine.txt"]


def test_bad_options_and_sources_are_one_line_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        patch_maker.build_library(tmp_path / "missing", tmp_path / "x.npz")
    with pytest.raises(patch_maker.BuildError, match="selection"):
        patch_maker.build_library([_square(1)], tmp_path / "x.npz", selection="best")
    with pytest.raises(SourceError, match="tfds:NAME"):
        parse_tfds("tfds:")
    assert parse_tfds("tfds:mnist:3.0.1:test[:10]") == ("mnist:3.0.1", "test[:10]")
    assert parse_tfds("tfds:coco/2017") == ("coco/2017", "train")


def test_memory_stays_bounded_while_streaming(tmp_path):
    count, size = 300, 160

    def images():
        for i in range(count):
            yield f"img{i}", _square((i % 256, 128, 255 - i % 256), size=size, noise=20, seed=i)

    total_bytes = count * size * size * 3
    done = []
    tracemalloc.start()
    try:
        report = patch_maker.build_library(
            images(),
            tmp_path / "big.npz",
            progress_fn=lambda d, t: done.append((d, t)),
            **SMALL,
            segmentation="whole",
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.count == count and done[-1] == (count, None)
    assert peak < total_bytes / 8, (peak, total_bytes)


def test_progress_counts_every_image_against_the_total(photos, tmp_path):
    calls = []
    patch_maker.build_library(photos, tmp_path / "p.npz", progress_fn=lambda *a: calls.append(a))
    assert calls == [(i, 5) for i in range(1, 6)]
    assert open_sources(photos).total == 5


def test_tfds_mock_data_is_a_source(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=5, policy=tfds.testing.MockPolicy.USE_CODE):
        report = patch_maker.build_library(
            "tfds:mnist:train", tmp_path / "m.npz", segmentation="whole", **SMALL
        )
    assert report.count == 5 and report.images == 5
    library = load_library(tmp_path / "m.npz", lowres_size=16, highres_size=32)
    assert library.names == tuple(f"mnist/train#{i}" for i in range(5))


def test_tfds_dataset_not_prepared_says_how_to_prepare_it(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(SourceError) as error:
        patch_maker.build_library("tfds:mnist", tmp_path / "m.npz", data_dir=tmp_path / "tfds")
    message = str(error.value)
    assert "\n" not in message and "tfds build mnist" in message and "--data-dir" in message
    with pytest.raises(SourceError, match="no TFDS dataset"):
        patch_maker.build_library("tfds:no_such_dataset_xyz", tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def _parse(argv):
    parser = argparse.ArgumentParser(prog="clipclop")
    cli_patches.add_patches_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_build_writes_library_and_preview(photos, tmp_path, capsys):
    out = tmp_path / "cli.npz"
    args = _parse(
        ["patches", "build", str(photos), "--out", str(out), "--quiet", "--max-patches", "5"]
    )
    assert cli_patches.run_patches(args) == 0
    assert load_library(out, lowres_size=16, highres_size=32).num_patches == 5
    assert out.with_suffix(".png").exists()
    captured = capsys.readouterr()
    assert "wrote 5 patches" in captured.out and "broken.png" in captured.err


def test_cli_model_hook_loads_a_user_model(tmp_path):
    model_file = tmp_path / "my_model.py"
    model_file.write_text(
        "import numpy as np\n"
        "class Model:\n"
        "    def __call__(self, rgb):\n"
        "        mask = np.zeros(rgb.shape[:2], np.float32)\n"
        "        mask[10:40, 10:30] = 1.0\n"
        "        return mask[None]\n"
    )
    args = _parse(
        [
            "patches",
            "build",
            str(tmp_path / "img.png"),
            "--out",
            str(tmp_path / "m.npz"),
            "--model",
            f"{model_file}:Model",
            "--no-preview",
            "--quiet",
        ]
    )
    Image.fromarray(_square((90, 160, 30), size=64)).save(tmp_path / "img.png")
    assert cli_patches.run_patches(args) == 0
    with np.load(tmp_path / "m.npz") as data:
        height, width = data["sizes"][0]
    assert (height, width) == (254, round(20 * 254 / 30))
    with pytest.raises(ValueError, match="no 'Nope'"):
        cli_patches.load_model(f"{model_file}:Nope")


def test_every_cli_option_has_help():
    parser = argparse.ArgumentParser(prog="clipclop")
    patches = cli_patches.add_patches_parser(parser.add_subparsers(dest="command"))
    build = patches._subparsers._group_actions[0].choices["build"]
    for action in build._actions:
        assert action.help, action.dest
    assert cli_patches.run_patches(_parse(["patches"])) == 2
