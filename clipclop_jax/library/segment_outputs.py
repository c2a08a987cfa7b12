"""What a learned segmentation model's output means as cut-outs (NumPy and SciPy only).

A model gives one of two kinds of output per image, and each becomes a list of ``Region``s
(a mask with the class name and the model's confidence):

* ``semantic_regions``: a *label map* (every pixel's class, e.g. SegFormer, DeepLabV3) and
  each pixel's confidence; every class region is split into its connected parts
  (``scipy.ndimage.label``, 8-connected), so two separate dogs are two cut-outs.
* ``instance_regions``: *queries* (Mask2Former, MaskFormer, DETR panoptic, EoMT), each a class
  distribution whose last entry is "no object" and a mask; each query that is kept becomes
  one cut-out, and where kept masks overlap a pixel goes to the query most sure of it.

Both keep only the classes ``class_ids`` picks (``resolve_classes``: names -> ids, all
object classes by default) and regions whose score reaches ``min_score``; regions smaller
than ``min_share`` of the image are specks and dropped. ``segment_models`` runs the model;
this module never imports torch, so its rules are tested on hand-made label maps and masks.
A new kind of model output is one more ``*_regions`` function here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import numpy as np
from scipy import ndimage

# Class names that mean "nothing here" in common label sets (PASCAL VOC's "background",
# COCO's unused "N/A" ids): left out unless asked for by name.
NOT_OBJECTS = frozenset({"background", "__background__", "n/a", "unlabeled", "unlabelled", "void"})
# Diagonal neighbours join a region: a thin limb touching at a corner stays with its body.
CONNECTIVITY = np.ones((3, 3), bool)


class Region(NamedTuple):
    """One object a segmenter found.

    Attributes:
      mask: [H, W] uint8 alpha in 0-255, the image's size.
      label: the class name ("person"), or None when the segmenter has no classes.
      score: the model's confidence in [0, 1], or None.
    """

    mask: np.ndarray
    label: str | None = None
    score: float | None = None


def resolve_classes(id2label: Mapping[int, str], names: Iterable[str] | None) -> frozenset[int]:
    """The class ids that ``names`` pick (case-insensitive), or every object class.

    Args:
      id2label: the model's class id -> name.
      names: class names to keep, or None for all but ``NOT_OBJECTS``.

    Raises:
      ValueError: a name the model does not know (the message lists the model's labels).
    """
    if names is None:
        return frozenset(i for i, n in id2label.items() if n.strip().lower() not in NOT_OBJECTS)
    by_name: dict[str, set[int]] = {}
    for index, name in id2label.items():
        by_name.setdefault(name.strip().lower(), set()).add(int(index))
    wanted = [n.strip() for n in names if n.strip()]
    if not wanted:
        raise ValueError("no class names given: name at least one, e.g. --classes person,dog.")
    unknown = [n for n in wanted if n.lower() not in by_name]
    if unknown:
        known = ", ".join(dict.fromkeys(id2label[i] for i in sorted(id2label)))
        raise ValueError(
            f"the model has no class {', '.join(map(repr, unknown))}: its labels are {known}."
        )
    return frozenset().union(*(by_name[n.lower()] for n in wanted))


def semantic_regions(
    label_map: np.ndarray,
    confidence: np.ndarray,
    id2label: Mapping[int, str],
    *,
    class_ids: frozenset[int],
    min_score: float = 0.5,
    min_share: float = 0.005,
) -> list[Region]:
    """Each connected part of each kept class in a label map, as one region.

    Args:
      label_map: [H, W] integer class ids.
      confidence: [H, W] float in [0, 1], the probability of each pixel's class; a region's
        score is its mean.
      id2label: class id -> name.
      class_ids: the classes to cut out (``resolve_classes``).
      min_score: regions scoring less are dropped.
      min_share: regions covering less of the image are dropped.

    Returns:
      Regions in increasing class id, then in ``ndimage.label``'s order (first pixel in
      raster order); masks are 255 inside, 0 outside.
    """
    label_map = np.asarray(label_map)
    confidence = np.asarray(confidence, np.float32)
    if confidence.shape != label_map.shape or label_map.ndim != 2:
        raise ValueError(
            f"label map {label_map.shape} and confidence {confidence.shape} must be one [H, W]."
        )
    least = min_share * label_map.size
    regions = []
    for class_id in np.unique(label_map).tolist():
        if class_id not in class_ids:
            continue
        parts, count = ndimage.label(label_map == class_id, structure=CONNECTIVITY)
        if count == 0:
            continue
        index = np.arange(1, count + 1)
        areas = ndimage.sum_labels(np.ones_like(confidence), parts, index)
        scores = ndimage.mean(confidence, parts, index)
        for part, area, score in zip(index.tolist(), areas, scores, strict=True):
            if area >= least and score >= min_score:
                mask = np.where(parts == part, 255, 0).astype(np.uint8)
                regions.append(Region(mask, id2label[class_id], float(score)))
    return regions


def resize_probability(probability: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """[h, w] float -> [H, W] float32, bilinear with pixel centres aligned (as torch's
    ``interpolate(..., align_corners=False)``)."""
    probability = np.asarray(probability, np.float32)
    if probability.shape == tuple(shape):
        return probability
    zoom = (shape[0] / probability.shape[0], shape[1] / probability.shape[1])
    resized = ndimage.zoom(probability, zoom, order=1, grid_mode=True, mode="nearest")
    return resized[: shape[0], : shape[1]]


def instance_regions(
    class_logits: np.ndarray,
    mask_logits: np.ndarray,
    id2label: Mapping[int, str],
    shape: tuple[int, int],
    *,
    class_ids: frozenset[int],
    min_score: float = 0.5,
    mask_threshold: float = 0.5,
    min_overlap: float = 0.8,
    min_share: float = 0.005,
) -> list[Region]:
    """The kept queries of a mask-classification model, one region each.

    A query's label is its most likely class (the last entry, "no object", excluded) and
    its score that class's probability (softmax over all entries, "no object" included).
    Queries of other classes or scoring under ``min_score`` are dropped; the masks of the
    rest (sigmoid of the logits, resized to ``shape``) cover a pixel where at least
    ``mask_threshold``; a pixel two of them cover goes to the one with the higher score x
    probability. A query left with less than ``min_overlap`` of its own mask mostly
    repeats another and is dropped (the rule of the Mask2Former paper's panoptic
    inference, which transformers' ``post_process_panoptic_segmentation`` follows).

    Args:
      class_logits: [Q, C + 1] float: C classes, then "no object".
      mask_logits: [Q, h, w] float, covering the whole image at any resolution.
      id2label: class id -> name, for ids 0..C-1.
      shape: (H, W) of the image.
      class_ids, min_score, min_share: as ``semantic_regions``.
      mask_threshold: mask probability from which a pixel belongs to the query.
      min_overlap: share of its mask a query must keep after overlaps are resolved.

    Returns:
      Regions by decreasing score; masks are 255 inside, 0 outside.
    """
    class_logits = np.asarray(class_logits, np.float64)
    mask_logits = np.asarray(mask_logits, np.float32)
    if class_logits.ndim != 2 or mask_logits.ndim != 3 or len(class_logits) != len(mask_logits):
        raise ValueError(
            f"class logits {class_logits.shape} and mask logits {mask_logits.shape} must be "
            "[Q, C + 1] and [Q, h, w]."
        )
    shifted = np.exp(class_logits - class_logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    labels = probabilities[:, :-1].argmax(axis=1)
    scores = probabilities[np.arange(len(labels)), labels]
    kept = [
        q
        for q in np.argsort(-scores, kind="stable").tolist()
        if labels[q] in class_ids and scores[q] >= min_score
    ]
    if not kept:
        return []
    height, width = shape

    def probability(query: int) -> np.ndarray:
        return resize_probability(1.0 / (1.0 + np.exp(-mask_logits[query])), shape)

    # Two passes, each mask resized again in the second, so that memory holds two [H, W]
    # maps however many queries are kept.
    best = np.zeros(shape, np.float32)
    owner = np.full(shape, -1, np.int32)
    for query in kept:
        weighted = probability(query) * np.float32(scores[query])
        better = weighted > best
        best[better], owner[better] = weighted[better], query
    least = min_share * height * width
    regions = []
    for query in kept:
        covers = probability(query) >= mask_threshold
        mine = covers & (owner == query)
        area = np.count_nonzero(mine)
        if area == 0 or area < least or area < min_overlap * np.count_nonzero(covers):
            continue
        mask = np.where(mine, 255, 0).astype(np.uint8)
        regions.append(Region(mask, id2label[int(labels[query])], float(scores[query])))
    return regions
