"""Patch libraries: every image mode, EXIF, background removal, caching and bad input."""

from __future__ import annotations

import io as _io
import logging
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from clipclop_jax import io
from clipclop_jax.library.builtins import PAINTED_SHAPES, PAINTS
from clipclop_jax.library.file_formats import save_library
from clipclop_jax.library.load import load_library
from clipclop_jax.library.patch_library import LibraryError, library_from_cutouts


def _disc(size=40, radius=12, colour=(200, 40, 30)):
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[inside] = (*colour, 255)
    return rgba


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def _load(folder, cache, **kwargs):
    return load_library(folder, lowres_size=32, highres_size=64, cache_dir=cache, **kwargs)


def test_every_pillow_mode_loads_as_a_cutout(tmp_path, cache):
    disc = _disc()
    rgb_on_white = np.where(disc[..., 3:] > 0, disc[..., :3], 255).astype(np.uint8)
    grey = np.where(disc[..., 3] > 0, 30, 230).astype(np.uint8)
    Image.fromarray(disc, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(rgb_on_white, "RGB").save(tmp_path / "rgb_white_background.png")
    Image.fromarray(np.stack([grey, disc[..., 3]], -1), "LA").save(tmp_path / "la.png")
    palette = Image.fromarray(disc[..., :3], "RGB").quantize(4)
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    palette.save(tmp_path / "p_transparent.png", transparency=palette.info["transparency"])
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "i16.png")
    Image.fromarray(rgb_on_white, "RGB").convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    Image.fromarray(grey, "L").save(tmp_path / "l.png")

    library = _load(tmp_path, cache)

    assert library.num_patches == 7
    assert library.low.rgba.shape == (7, 32, 32, 4) and library.high.rgba.shape == (7, 64, 64, 4)
    assert library.low.rgba.dtype == np.uint8
    for i, name in enumerate(library.names):
        alpha = library.high.rgba[i, ..., 3]
        # Every source is a disc on a uniform background: the cut-out is the disc, which
        # fills the square's inner part, so its corners are transparent and its centre opaque.
        assert alpha[32, 32] > 250, name
        assert alpha[4, 4] < 5, name
        # The renderer reads the outer ring outside every patch: it must be transparent.
        assert alpha[0].max() == alpha[-1].max() == alpha[:, 0].max() == alpha[:, -1].max() == 0
    colours = library.high.rgba[:, 32, 32, :3].astype(int)
    assert abs(colours[library.names.index("rgba.png")] - (200, 40, 30)).max() <= 2
    assert abs(colours[library.names.index("rgb_white_background.png")] - (200, 40, 30)).max() <= 6
    assert abs(colours[library.names.index("i16.png")] - 30).max() <= 2


def test_exif_orientation_is_applied(tmp_path, cache):
    tall = np.zeros((60, 20, 4), np.uint8)
    tall[..., :3], tall[..., 3] = 255, 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": stored tall, shown wide
    Image.fromarray(tall, "RGBA").save(tmp_path / "rotated.png", exif=exif)

    library = _load(tmp_path, cache)

    height, width = library.high.sizes[0]
    assert width > 2 * height


def test_patch_is_cropped_to_its_alpha_and_keeps_its_aspect(tmp_path, cache):
    rgba = np.zeros((100, 100, 4), np.uint8)
    rgba[10:30, 50:90] = (0, 255, 0, 255)  # a 20 x 40 box in a large transparent image
    Image.fromarray(rgba, "RGBA").save(tmp_path / "box.png")

    library = _load(tmp_path, cache)

    assert tuple(library.high.sizes[0]) == (31, 62)  # longest side = 64 - 2, ratio kept
    visible = library.high.rgba[0, ..., 3] > 128
    rows, cols = np.flatnonzero(visible.any(1)), np.flatnonzero(visible.any(0))
    assert rows.size == 31 and cols.size == 62


def test_keep_relative_size(tmp_path, cache):
    Image.fromarray(_disc(40, 18), "RGBA").save(tmp_path / "big.png")
    Image.fromarray(_disc(40, 9), "RGBA").save(tmp_path / "small.png")

    same = _load(tmp_path, cache)
    relative = _load(tmp_path, cache, keep_relative_size=True)

    assert same.high.sizes[0, 0] == same.high.sizes[1, 0]
    big, small = relative.high.sizes[:, 0]
    assert abs(small / big - 19 / 37) < 0.06


def test_corrupt_nonimage_and_transparent_files_are_skipped_with_warnings(tmp_path, cache, caplog):
    Image.fromarray(_disc(), "RGBA").save(tmp_path / "good.png")
    good = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good[: len(good) // 2])
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg at all" * 10)
    (tmp_path / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((8, 8, 4), np.uint8), "RGBA").save(tmp_path / "empty.png")

    with caplog.at_level(logging.WARNING, logger="clipclop_jax.library.load"):
        library = _load(tmp_path, cache)

    assert library.names == ("good.png",)
    warned = caplog.text
    for name in ("truncated.png", "garbage.jpg", "notes.txt", "empty.png"):
        assert name in warned
    assert "fully transparent" in warned and "not an image" in warned


def _one_line(error: Exception) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text
    return text


def test_missing_empty_and_useless_folders_fail_with_one_line(tmp_path, cache):
    with pytest.raises(LibraryError) as missing:
        _load(tmp_path / "nowhere", cache)
    assert "does not exist" in _one_line(missing.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LibraryError) as no_files:
        _load(empty, cache)
    assert "is empty" in _one_line(no_files.value)

    useless = tmp_path / "useless"
    useless.mkdir()
    (useless / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.fromarray(np.zeros((4, 4, 4), np.uint8), "RGBA").save(useless / "clear.png")
    with pytest.raises(LibraryError) as nothing:
        _load(useless, cache)
    message = _one_line(nothing.value)
    assert "no usable image" in message and "a.png" in message and "clear.png" in message
    assert not any(cache.glob("*.npz")) if cache.exists() else True


def _png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb's signature)."""
    buffer = _io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def test_decompression_bomb_is_refused_without_decoding(tmp_path, cache, caplog):
    (tmp_path / "bomb.png").write_bytes(_png_claiming_size(60_000, 60_000))
    with pytest.raises(io.ImageReadError, match="decompression bomb"):
        io.read_rgba(tmp_path / "bomb.png")
    Image.fromarray(_disc(), "RGBA").save(tmp_path / "ok.png")
    with caplog.at_level(logging.WARNING, logger="clipclop_jax.library.load"):
        assert _load(tmp_path, cache).names == ("ok.png",)
    assert "bomb.png" in caplog.text


def test_cache_is_reused_and_invalidated_when_a_source_changes(tmp_path, cache):
    folder = tmp_path / "patches"
    folder.mkdir()
    Image.fromarray(_disc(colour=(255, 0, 0)), "RGBA").save(folder / "a.png")
    first = _load(folder, cache)
    assert len(list(cache.glob("*.npz"))) == 1
    again = _load(folder, cache)
    assert again.fingerprint == first.fingerprint

    Image.fromarray(_disc(colour=(0, 0, 255)), "RGBA").save(folder / "a.png")
    stat = os.stat(folder / "a.png")
    os.utime(folder / "a.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    changed = _load(folder, cache)

    assert changed.fingerprint != first.fingerprint
    assert changed.high.rgba[0, 32, 32, 2] > 250


def test_corrupt_cache_file_is_ignored(tmp_path, cache):
    Image.fromarray(_disc(), "RGBA").save(tmp_path / "a.png")
    first = _load(tmp_path, cache)
    for file in cache.glob("*.npz"):
        file.write_bytes(b"junk")
    assert _load(tmp_path, cache).fingerprint == first.fingerprint


def test_npz_library_round_trips(tmp_path):
    library = library_from_cutouts(
        [_disc(40, 18), _disc(30, 10, (0, 0, 255))],
        lowres_size=24,
        highres_size=48,
        names=["a", "b"],
    )
    save_library(tmp_path / "lib.npz", library)

    loaded = load_library(tmp_path / "lib.npz", lowres_size=24, highres_size=48)

    assert loaded.names == ("a", "b")
    np.testing.assert_array_equal(loaded.high.sizes, library.high.sizes)

    def premultiplied(rgba):
        rgba = rgba.astype(np.float64) / 255
        return rgba[..., :3] * rgba[..., 3:]

    # The high-resolution squares are the file's source: they come back as they were.
    high = np.abs(premultiplied(loaded.high.rgba) - premultiplied(library.high.rgba))
    assert high.max() < 0.02
    # The low copy is resampled from them instead of from the cut-outs: close, not equal.
    low = np.abs(premultiplied(loaded.low.rgba) - premultiplied(library.low.rgba))
    assert low.mean() < 0.03


def test_original_npy_patch_file_loads(tmp_path):
    # The original stores [W, H, C] (width first); 3-channel patches have black backgrounds.
    tall = np.zeros((20, 50, 3), np.uint8)  # 20 wide, 50 tall
    tall[5:15, 5:45] = (10, 200, 10)
    with_alpha = np.transpose(_disc(30, 12), (1, 0, 2))
    patches = np.empty(2, dtype=object)
    patches[0], patches[1] = tall, with_alpha
    np.save(tmp_path / "animals.npy", patches, allow_pickle=True)

    library = load_library(tmp_path / "animals.npy", lowres_size=32, highres_size=64)

    assert library.num_patches == 2
    height, width = library.high.sizes[0]
    assert height == 62 and abs(width - 62 * 10 / 40) <= 1
    assert library.high.rgba[0, 32, 32, 1] > 190


def test_wrong_kind_of_file_fails_with_one_line(tmp_path):
    (tmp_path / "prompts.txt").write_text("hello")
    with pytest.raises(LibraryError, match="not a .npz or .npy"):
        load_library(tmp_path / "prompts.txt")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(LibraryError, match="not a clipclop-jax library"):
        load_library(tmp_path / "other.npz")


@pytest.mark.parametrize("name", ["shapes", "painted", "photos"])
def test_builtin_libraries_load_offline(name, cache):
    library = load_library(name, lowres_size=32, highres_size=64, cache_dir=cache)
    assert library.num_patches >= 12
    alpha = library.low.rgba[..., 3]
    assert alpha[:, 0].max() == 0 and alpha[:, :, -1].max() == 0
    assert (alpha.reshape(library.num_patches, -1).max(1) == 255).all()
    if name == "shapes":
        opaque = library.high.rgba[..., 3] > 250
        assert (library.high.rgba[..., :3][opaque] == 255).all()  # white, to be tinted
    elif name == "painted":
        assert library.num_patches == len(PAINTS) * len(PAINTED_SHAPES)
        for i, patch_name in enumerate(library.names):
            colour, shape = patch_name.removeprefix("painted/").split("-")
            assert shape in PAINTED_SHAPES
            opaque = library.high.rgba[i, ..., 3] > 250
            rgb = library.high.rgba[i][opaque][:, :3].astype(int)  # resampling rings a little
            np.testing.assert_array_equal(np.median(rgb, axis=0), PAINTS[colour], patch_name)
            assert np.percentile(np.abs(rgb - PAINTS[colour]), 95) <= 16, patch_name
    else:
        assert len({n.split("#")[0] for n in library.names}) >= 4  # from several photos
