"""Segmenters: object-sized superpixels, studio backgrounds, the learned-model hook, feathering."""

from __future__ import annotations

import numpy as np
import pytest

skimage_data = pytest.importorskip("skimage.data")

from clipclop_jax.library import segment  # noqa: E402
from clipclop_jax.library.cutouts import ALPHA_EMPTY  # noqa: E402


def _studio_photo(size=160):
    """Two discs (red, blue) on a light grey backdrop with slight sensor noise."""
    rng = np.random.default_rng(0)
    image = np.full((size, size, 3), 235, np.int16) + rng.integers(-3, 4, (size, size, 3))
    yy, xx = np.mgrid[:size, :size]
    for (cy, cx), colour in (((50, 50), (200, 30, 30)), ((110, 115), (30, 40, 190))):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= 25**2] = colour
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("photo", ["coffee", "chelsea"])
def test_superpixel_cutouts_are_object_sized_and_feathered(photo):
    image = getattr(skimage_data, photo)()
    masks = segment.superpixel_masks(image)
    area = image.shape[0] * image.shape[1]

    assert 3 <= len(masks) <= 10
    for mask in masks:
        share = np.count_nonzero(mask) / area
        assert 0.01 <= share <= 0.35  # filled holes may add a little to max_share 0.25
        cutout = segment.cutout_from_mask(image, mask, feather_pixels=3.0)
        alpha = cutout[..., 3].astype(int)
        # Object-like: not a sliver of the photo, and not the whole frame.
        assert max(cutout.shape[:2]) < max(image.shape[:2])
        assert min(cutout.shape[:2]) >= 0.05 * min(image.shape[:2])
        # Feathered: a soft rim (partial alpha) around a fully opaque interior.
        assert np.count_nonzero((alpha > ALPHA_EMPTY) & (alpha < 250)) > 0
        assert alpha.max() == 255


def test_superpixels_are_compact():
    image = skimage_data.coffee()
    labels = segment.superpixel_labels(image)
    loose = segment.select_regions(labels, min_solidity=0.0, max_regions=100)
    strict = segment.select_regions(labels, min_solidity=0.8, max_regions=100)
    assert set(strict) <= set(loose) and len(strict) < len(loose)
    for label in strict:
        assert segment._solidity(labels == label) >= 0.8


def test_graph_segments_are_object_sized():
    image = skimage_data.chelsea()
    masks = segment.superpixel_masks(image, method="graph")
    assert 1 <= len(masks) <= 10
    for mask in masks:
        assert 0.01 <= np.count_nonzero(mask) / mask.size <= 0.35


def test_background_removal_gives_one_mask_per_object():
    masks = segment.background_masks(_studio_photo())
    assert len(masks) == 2
    disc_area = np.pi * 25**2
    for mask in masks:
        assert abs(np.count_nonzero(mask) - disc_area) < 0.15 * disc_area
    together = segment.background_masks(_studio_photo(), split_objects=False)
    assert len(together) == 1


def test_background_removal_declines_photos_without_a_uniform_border():
    assert segment.background_masks(skimage_data.coffee()) == []


def test_feathering_leaves_no_halo_of_the_background():
    image = _studio_photo()
    for mask in segment.background_masks(image):
        cutout = segment.cutout_from_mask(image, mask, feather_pixels=4.0).astype(int)
        visible = cutout[..., 3] > 0
        # Every visible pixel is object colour: none of the grey backdrop (~235 in all
        # three channels) survives at partial alpha.
        assert (cutout[..., :3][visible].min(axis=-1) < 60).all()
        assert np.count_nonzero(visible & (cutout[..., 3] < 255)) > 0


def test_auto_picks_alpha_then_background_then_superpixels():
    auto = segment.make_segmenter("auto")
    disc = np.zeros((40, 40, 4), np.uint8)
    disc[10:30, 10:30] = (255, 0, 0, 255)
    assert len(auto(disc, True)) == 1 and np.array_equal(auto(disc, True)[0], disc[..., 3])
    studio = np.concatenate([_studio_photo(), np.full((160, 160, 1), 255, np.uint8)], -1)
    assert len(auto(studio, False)) == 2
    coffee = skimage_data.coffee()
    coffee_rgba = np.concatenate([coffee, np.full(coffee.shape[:2] + (1,), 255, np.uint8)], -1)
    expected = segment.superpixel_masks(coffee)
    found = auto(coffee_rgba, False)
    assert len(found) == len(expected) and all(map(np.array_equal, found, expected))


class _FakeModel:
    """Stands in for a learned model: soft masks of two boxes at half resolution."""

    def __init__(self):
        self.calls = []

    def __call__(self, rgb):
        self.calls.append(rgb.shape)
        height, width = rgb.shape[0] // 2, rgb.shape[1] // 2
        masks = np.zeros((3, height, width), np.float32)
        masks[0, 5:25, 5:25] = 0.9
        masks[1, 30:45, 20:60] = 1.0
        masks[2, 0:2, 0:2] = 1.0  # a speck: below min_share, dropped
        return masks


def test_learned_model_masks_are_used():
    model = _FakeModel()
    rgb = np.full((100, 140, 3), 128, np.uint8)
    masks = segment.make_segmenter(model)(np.dstack([rgb, np.full((100, 140), 255)]), False)

    assert model.calls == [(100, 140, 3)]
    assert len(masks) == 2 and all(m.shape == (100, 140) for m in masks)
    rows, cols = np.nonzero(masks[0])
    assert 8 <= rows.min() <= 12 and 48 <= rows.max() <= 52 and 8 <= cols.min() <= 12
    assert abs(int(masks[0].max()) - 230) <= 2  # probability 0.9 kept as soft alpha
    assert masks[1].max() == 255


def test_learned_model_may_return_a_label_map():
    labels = np.zeros((50, 50), np.int32)
    labels[5:20, 5:20], labels[30:45, 25:45] = 1, 7
    masks = segment.model_masks(lambda rgb: labels, np.zeros((50, 50, 3), np.uint8))
    assert [np.count_nonzero(m) for m in masks] == [225, 300]


def test_learned_model_may_return_one_probability_map():
    probability = np.zeros((40, 40), np.float32)
    probability[10:30, 5:15] = 0.8
    (mask,) = segment.model_masks(lambda rgb: probability, np.zeros((40, 40, 3), np.uint8))
    assert np.count_nonzero(mask) == 200 and mask.max() == 204


def test_learned_model_with_bad_output_is_a_clear_error():
    with pytest.raises(ValueError, match="expected \\[H, W\\]"):
        segment.model_masks(lambda rgb: np.zeros((2, 3, 4, 5)), np.zeros((8, 8, 3), np.uint8))


def test_unknown_segmentation_is_rejected():
    with pytest.raises(ValueError, match="superpixels"):
        segment.make_segmenter("magic")


def test_the_photos_builtin_recipe_is_expressible_with_these_segmenters():
    from clipclop_jax.library import builtins as builtin

    cutouts, names = builtin.photo_cutouts()
    image = skimage_data.coffee()
    labels = segment.superpixel_labels(image, num_segments=builtin.SEGMENTS_PER_PHOTO)
    keep = segment.select_regions(
        labels,
        min_share=builtin.MIN_SEGMENT_SHARE,
        max_share=builtin.MAX_SEGMENT_SHARE,
        max_regions=builtin.MAX_PATCHES_PER_PHOTO,
    )
    mine = {
        f"photos/coffee#{label}": segment.cutout_from_mask(
            image, np.where(labels == label, 255, 0), feather_pixels=builtin.FEATHER_PIXELS
        )
        for label in keep
    }
    theirs = {n: c for n, c in zip(names, cutouts, strict=True) if n.startswith("photos/coffee")}
    assert mine.keys() == theirs.keys()
    assert all(np.array_equal(mine[n], theirs[n]) for n in mine)
