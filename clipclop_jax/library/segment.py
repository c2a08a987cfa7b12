"""Segmenters: an image -> the masks of the object-like regions to cut out of it.

Every segmenter takes one image as read (``io.read_rgba``: [H, W, 4] uint8 straight RGBA and
whether the file had transparency) and returns masks, each [H, W] uint8 alpha in 0-255 (soft
edges allowed). ``cutout_from_mask`` turns one mask into a feathered, cropped cut-out.

* ``alpha_masks``: the file's own transparency (images without any are kept whole).
* ``background_masks``: studio-style photos: the uniform border colour is removed
  (``cutouts.remove_background``) and each separate object becomes one mask.
* ``superpixel_masks``: SLIC superpixels or Felzenszwalb's graph-based segments
  (scikit-image), kept if object-sized and compact.
* ``model_masks``: a learned segmentation model the user supplies (``MaskModel``).

Segmenters never resize, filter by pixel size or pick between images: ``maker`` and ``curation`` do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
from scipy import ndimage

from clipclop_jax.library.cutouts import ALPHA_EMPTY, crop_to_alpha, feather, remove_background

# A segmenter: (rgba [H, W, 4] uint8, has_alpha) -> masks, each [H, W] uint8.
Segmenter = Callable[[np.ndarray, bool], list[np.ndarray]]
SEGMENTATIONS = ("auto", "alpha", "background", "superpixels", "graph", "whole")
# segmentation="model:NAME_OR_PATH": a Hugging Face model (``segment_models``, via ``maker``).
MODEL_PREFIX = "model:"


class MaskModel(Protocol):
    """A learned segmentation model, wrapped by the user (weights are theirs to load).

    Called with one image, [H, W, 3] uint8 RGB, it returns either
    * instance masks: [K, h, w] (or a sequence of K [h, w] arrays, or one [h, w] mask),
      bool, or float probabilities in [0, 1], or uint8 in 0-255; or
    * a label map: [h, w] integer, 0 for background and 1..K for the objects.
    ``(h, w)`` may differ from ``(H, W)`` (e.g. a model working at 512 x 512): masks are
    resized to the image bilinearly.
    """

    def __call__(self, rgb: np.ndarray) -> np.ndarray | Sequence[np.ndarray]: ...


def alpha_masks(rgba: np.ndarray, has_alpha: bool) -> list[np.ndarray]:
    """The image's own alpha; an image without transparency is one opaque rectangle."""
    return [np.array(rgba[..., 3]) if has_alpha else np.full(rgba.shape[:2], 255, np.uint8)]


def whole_masks(rgba: np.ndarray, has_alpha: bool) -> list[np.ndarray]:
    """The whole rectangle, opaque (textures, tiles, ready-made patches)."""
    return [np.full(rgba.shape[:2], 255, np.uint8)]


def background_masks(
    rgb: np.ndarray, *, split_objects: bool = True, min_share: float = 0.005
) -> list[np.ndarray]:
    """Masks of the objects in front of a uniform background; [] if the border is not uniform.

    Args:
      rgb: [H, W, 3] uint8.
      split_objects: one mask per connected object (a scan of several leaves gives one
        cut-out per leaf); False keeps them together.
      min_share: objects covering less of the image than this are specks and dropped.
    """
    alpha = remove_background(rgb)
    if alpha.min() == 255:
        return []
    if not split_objects:
        return [alpha]
    labels, count = ndimage.label(alpha > ALPHA_EMPTY)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    keep = [k for k in range(1, count + 1) if areas[k] >= min_share * alpha.size]
    return [np.where(labels == k, alpha, 0).astype(np.uint8) for k in keep]


def superpixel_labels(
    rgb: np.ndarray, *, method: str = "slic", num_segments: int = 24, compactness: float = 10.0
) -> np.ndarray:
    """[H, W] int labels from 0: SLIC superpixels, or Felzenszwalb's graph-based segments.

    Args:
      rgb: [H, W, 3] uint8.
      method: "slic" (regular, compact regions) or "graph" (Felzenszwalb-Huttenlocher:
        regions follow colour edges, irregular sizes).
      num_segments: about how many regions to make.
      compactness: SLIC's colour-versus-space balance (higher: rounder regions).
    """
    try:
        from skimage.segmentation import felzenszwalb, slic
    except ImportError:
        raise ValueError(
            "superpixel segmentation needs scikit-image: pip install 'clipclop-jax[photos]'."
        ) from None
    if method == "slic":
        return slic(rgb, n_segments=num_segments, compactness=compactness, start_label=0)
    if method == "graph":
        area = rgb.shape[0] * rgb.shape[1]
        # scale and min_size from the image area, so that about num_segments regions result.
        return felzenszwalb(
            rgb, scale=area / num_segments / 20.0, sigma=0.8, min_size=area // (4 * num_segments)
        )
    raise ValueError(f"superpixel method {method!r} is unknown: use 'slic' or 'graph'.")


def select_regions(
    labels: np.ndarray,
    *,
    min_share: float = 0.01,
    max_share: float = 0.25,
    min_solidity: float = 0.0,
    max_regions: int = 10,
) -> list[int]:
    """The labels of object-like regions, in increasing label order.

    Args:
      labels: [H, W] non-negative int.
      min_share, max_share: a region covering less of the image is a fragment, more is
        scenery (sky, floor, wall).
      min_solidity: area over convex-hull area (1: convex; thin, branching or ring-shaped
        regions score low).
      max_regions: the largest regions that pass are kept.
    """
    area = labels.size
    counts = np.bincount(labels.ravel())
    candidates = [
        label
        for label in np.argsort(-counts, kind="stable")
        if min_share <= counts[label] / area <= max_share
    ]
    keep = []
    for label in candidates:
        if len(keep) == max_regions:
            break
        if min_solidity > 0 and _solidity(labels == label) < min_solidity:
            continue
        keep.append(int(label))
    return sorted(keep)


def _solidity(mask: np.ndarray) -> float:
    from skimage.morphology import convex_hull_image

    crop = mask[_box(mask)]
    return float(crop.sum() / max(convex_hull_image(crop).sum(), 1))


def _box(mask: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of a non-empty mask's nonzero pixels, as slices."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def superpixel_masks(
    rgb: np.ndarray,
    *,
    method: str = "slic",
    num_segments: int = 24,
    compactness: float = 10.0,
    min_share: float = 0.01,
    max_share: float = 0.25,
    min_solidity: float = 0.6,
    max_regions: int = 10,
    fill_holes: bool = True,
) -> list[np.ndarray]:
    """Object-like regions of a photo: see ``superpixel_labels`` and ``select_regions``.

    ``fill_holes`` closes holes inside a region (a small region inside a larger one joins
    it), so cut-outs are solid.
    """
    labels = superpixel_labels(
        rgb, method=method, num_segments=num_segments, compactness=compactness
    )
    keep = select_regions(
        labels,
        min_share=min_share,
        max_share=max_share,
        min_solidity=min_solidity,
        max_regions=max_regions,
    )
    masks = []
    for label in keep:
        mask = labels == label
        if fill_holes:
            box = _box(mask)
            mask[box] = ndimage.binary_fill_holes(mask[box])
        masks.append(np.where(mask, 255, 0).astype(np.uint8))
    return masks


def model_masks(
    model: MaskModel, rgb: np.ndarray, *, threshold: float = 0.5, min_share: float = 0.005
) -> list[np.ndarray]:
    """Runs a learned model (``MaskModel``) on one image and returns its masks.

    Probabilities are kept as soft alpha above ``threshold`` and cut to 0 below it; masks
    smaller than ``min_share`` of the image are dropped.
    """
    height, width = rgb.shape[:2]
    output = model(np.ascontiguousarray(rgb[..., :3], np.uint8))
    if isinstance(output, np.ndarray) and output.ndim == 2:
        if np.issubdtype(output.dtype, np.integer):  # a label map
            output = [output == k for k in np.unique(output) if k != 0]
        else:  # one mask
            output = [output]
    masks = []
    for mask in output:
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise ValueError(
                f"the segmentation model returned a mask of shape {mask.shape}: expected [H, W]."
            )
        if mask.dtype == np.bool_:
            mask = mask.astype(np.float32)
        elif mask.dtype == np.uint8:
            mask = mask.astype(np.float32) / 255.0
        mask = np.clip(np.nan_to_num(np.asarray(mask, np.float32)), 0.0, 1.0)
        if mask.shape != (height, width):
            zoom = (height / mask.shape[0], width / mask.shape[1])
            mask = np.clip(ndimage.zoom(mask, zoom, order=1, grid_mode=True, mode="nearest"), 0, 1)
            mask = mask[:height, :width]
        mask = np.where(mask >= threshold, mask, 0.0)
        if np.count_nonzero(mask) >= min_share * mask.size:
            masks.append(np.round(mask * 255.0).astype(np.uint8))
    return masks


def make_segmenter(segmentation: str | MaskModel = "auto", **options) -> Segmenter:
    """The segmenter named by ``segmentation``, or one wrapping a ``MaskModel``.

    Args:
      segmentation: "auto" (the file's alpha if it has one, else background removal if
        the border is uniform, else superpixels), "alpha", "background", "superpixels"
        (SLIC), "graph" (Felzenszwalb), "whole", or a ``MaskModel`` callable.
      **options: keyword options of ``superpixel_masks`` (for "auto", "superpixels",
        "graph"), ``background_masks`` (for "background") or ``model_masks`` (a model).
    """
    if callable(segmentation):
        model = segmentation
        return lambda rgba, has_alpha: model_masks(model, rgba[..., :3], **options)
    if segmentation not in SEGMENTATIONS:
        raise ValueError(
            f"segmentation {segmentation!r} is unknown: use one of {', '.join(SEGMENTATIONS)} "
            "or a callable model."
        )
    if segmentation in ("alpha", "whole") and options:
        raise ValueError(f"segmentation {segmentation!r} takes no options, got {sorted(options)}.")
    if segmentation == "alpha":
        return alpha_masks
    if segmentation == "whole":
        return whole_masks
    if segmentation == "background":
        return lambda rgba, has_alpha: background_masks(rgba[..., :3], **options)
    method = "graph" if segmentation == "graph" else "slic"
    superpixels = lambda rgba, has_alpha: superpixel_masks(rgba[..., :3], method=method, **options)
    if segmentation != "auto":
        return superpixels

    def auto(rgba: np.ndarray, has_alpha: bool) -> list[np.ndarray]:
        if has_alpha:
            return alpha_masks(rgba, has_alpha)
        return background_masks(rgba[..., :3]) or superpixels(rgba, has_alpha)

    return auto


def cutout_from_mask(
    rgb: np.ndarray, mask: np.ndarray, *, feather_pixels: float
) -> np.ndarray | None:
    """One cut-out: the image under ``mask``, its edge feathered inwards, cropped.

    Args:
      rgb: [H, W, 3 or 4] uint8 (a fourth channel is ignored).
      mask: [H, W] uint8 alpha.
      feather_pixels: width of the soft edge (``cutouts.feather``); inward only, so no
        background colour from outside the mask shows as a halo.

    Returns:
      [h, w, 4] uint8 straight RGBA cropped to its visible pixels, or None if none are.
    """
    mask = np.asarray(mask)
    if not mask.any():
        return None
    # The mask is 0 outside its box and feather pads with 0, so feathering the box alone
    # gives the same alpha, in a fraction of the time.
    box = _box(mask)
    alpha = feather(mask[box], feather_pixels)
    return crop_to_alpha(np.concatenate([np.asarray(rgb)[box][..., :3], alpha[..., None]], -1))
