"""Hugging Face segmentation models, by hub name or local folder, through transformers' PyTorch.

``load_hub_segmenter("nvidia/segformer-b0-finetuned-ade-512-512", classes=["person"])``
returns a ``HubSegmenter``: called on one image it gives that image's ``Region``s, and
``segment_batch`` does the same for several images in one forward pass per image shape (the
model's image processor resizes each image as the model expects; images that come out the
same shape share a pass, so nothing is padded and a batch gives what single images give).
The model runs on the GPU when PyTorch sees one.

Two kinds of model are understood, by their transformers ``model_type``:
* semantic (``SEMANTIC``: SegFormer, DeepLabV3 on MobileNetV2, BEiT, DPT, UperNet, ...):
  per-class logits, upsampled to the image (bilinear, a few classes at a time so memory
  stays at a few [H, W] maps) into a label map and each pixel's confidence;
* mask classification (``MASK_CLASSIFICATION``: Mask2Former, MaskFormer, DETR panoptic):
  per-query class logits and mask logits.
``segment_outputs`` turns either into regions; that is where the rules live. Another model
family with one of these two outputs is one more entry in ``SEMANTIC`` (transformers' list)
or ``MASK_CLASSIFICATION`` (the names of its two outputs).

PyTorch is an optional dependency (``pip install "clipclop-jax[segment]"``); it is imported
only when a model is loaded.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Sequence

import numpy as np

from clipclop_jax.library.segment_outputs import (
    Region,
    instance_regions,
    resolve_classes,
    semantic_regions,
)

# model_type -> (class logits output, mask logits output) of mask-classification models.
MASK_CLASSIFICATION = {
    "mask2former": ("class_queries_logits", "masks_queries_logits"),
    "maskformer": ("class_queries_logits", "masks_queries_logits"),
    "detr": ("logits", "pred_masks"),
}
# Classes upsampled to the image at once (bounds memory: this many [H, W] float maps).
CLASS_CHUNK = 16
EXAMPLE_MODEL = "nvidia/segformer-b0-finetuned-ade-512-512"


class SegmentationModelError(ValueError):
    """A segmentation model cannot be loaded or used; the message says what to do."""


def _torch():
    try:
        import torch
    except ImportError:
        raise SegmentationModelError(
            "segmentation models need PyTorch: pip install 'clipclop-jax[segment]'."
        ) from None
    return torch


def semantic_model_types() -> tuple[str, ...]:
    """The transformers ``model_type``s with a semantic segmentation head."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES,
    )

    return tuple(MODEL_FOR_SEMANTIC_SEGMENTATION_MAPPING_NAMES)


def load_hub_segmenter(
    name_or_path: str | os.PathLike,
    *,
    classes: Iterable[str] | None = None,
    min_score: float = 0.5,
    threshold: float = 0.5,
    min_share: float = 0.005,
    batch_size: int = 8,
    device: str | None = None,
) -> HubSegmenter:
    """Loads a segmentation model and its image processor (``from_pretrained``).

    Args:
      name_or_path: a hub name ("nvidia/segformer-b0-finetuned-ade-512-512"; downloaded once
        into the Hugging Face cache, or read from it offline) or a folder written by
        ``save_pretrained`` (model and image processor).
      classes: class names to cut out (case-insensitive); None: every class but
        background-like ones (``segment_outputs.NOT_OBJECTS``).
      min_score: regions the model is less sure of are dropped (0-1).
      threshold: mask probability from which a pixel is in a query's mask (mask models).
      min_share: regions covering less of the image are dropped.
      batch_size: images per forward pass (at most).
      device: "cpu", "cuda", ...; None: the GPU if PyTorch sees one, else the CPU.

    Raises:
      SegmentationModelError (a ``ValueError``): PyTorch missing, the model not found, not
        a segmentation model, or an unknown class name (the message lists the model's
        labels); raised before the weights are read where it can be.
    """
    if not 0 <= min_score <= 1:
        raise SegmentationModelError(f"min_score {min_score} is out of range: use 0 to 1.")
    if not 0 < threshold < 1:
        raise SegmentationModelError(f"threshold {threshold} is out of range: use 0 to 1.")
    if batch_size < 1:
        raise SegmentationModelError(f"batch_size {batch_size} must be at least 1.")
    torch = _torch()
    import transformers

    source = os.fspath(name_or_path)
    if not source.strip():
        raise SegmentationModelError(
            f"no segmentation model named: give a hub name such as model:{EXAMPLE_MODEL} or "
            "a folder written by save_pretrained."
        )
    looks_local = os.path.isabs(source) or source.startswith((".", "~")) or os.path.exists(source)
    source = os.path.expanduser(source)
    if looks_local and not os.path.isdir(source):
        raise SegmentationModelError(
            f"segmentation model folder {source!r} does not exist: give a folder written by "
            "save_pretrained, or a hub name."
        )
    try:
        config = transformers.AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise SegmentationModelError(_not_found(source, error)) from None
    model_type = getattr(config, "model_type", "?")
    if model_type in MASK_CLASSIFICATION:
        kind, auto = "mask", transformers.AutoModelForUniversalSegmentation
        if model_type == "detr" and "DetrForSegmentation" not in (config.architectures or []):
            raise SegmentationModelError(
                f"{source!r} is a DETR object detector without a mask head: use a panoptic "
                "checkpoint such as facebook/detr-resnet-50-panoptic."
            )
    elif model_type in semantic_model_types():
        kind, auto = "semantic", transformers.AutoModelForSemanticSegmentation
    else:
        supported = ", ".join(sorted({*semantic_model_types(), *MASK_CLASSIFICATION}))
        raise SegmentationModelError(
            f"{source!r} is a {model_type!r} model, not a segmentation model clipclop-jax "
            f"runs: use one of the types {supported}."
        )
    id2label = {int(k): str(v) for k, v in config.id2label.items()}
    class_ids = resolve_classes(id2label, classes)
    # The checkpoint holds every weight: never fetch a backbone's own pretrained weights.
    if getattr(config, "use_pretrained_backbone", False):
        config.use_pretrained_backbone = False
    try:
        processor = transformers.AutoImageProcessor.from_pretrained(source, use_fast=False)
        model = auto.from_pretrained(source, config=config)
    except (OSError, ValueError, ImportError) as error:
        raise SegmentationModelError(_not_found(source, error)) from None
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device).eval()
    segmenter = HubSegmenter(
        model,
        processor,
        kind=kind,
        id2label=id2label,
        class_ids=class_ids,
        min_score=min_score,
        threshold=threshold,
        min_share=min_share,
        batch_size=batch_size,
        device=device,
    )
    if classes is not None:
        named = ", ".join(n.strip() for n in classes if n.strip())
        segmenter.empty_reason = f"no {named} scoring {min_score} or more"
    return segmenter


def _not_found(source: str, error: Exception) -> str:
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    return (
        f"segmentation model {source!r} cannot be loaded ({reason}): give a folder written by "
        "save_pretrained, or a hub name that is in the Hugging Face cache; fetch one where "
        f"there is internet with `hf download {EXAMPLE_MODEL}` (see docs/libraries.md)."
    )


class HubSegmenter:
    """A loaded model: images -> ``Region``s with class names and scores.

    Attributes:
      kind: "semantic" or "mask" (mask classification).
      id2label: the model's class id -> name.
      batch_size: images per forward pass (at most).
      device: where the model runs.
    """

    def __init__(
        self,
        model,
        processor,
        *,
        kind: str,
        id2label: dict[int, str],
        class_ids: frozenset[int],
        min_score: float,
        threshold: float,
        min_share: float,
        batch_size: int,
        device: str,
    ):
        self.model, self.processor, self.kind = model, processor, kind
        self.id2label, self.class_ids = id2label, class_ids
        self.min_score, self.threshold, self.min_share = min_score, threshold, min_share
        self.batch_size, self.device = batch_size, device
        self._takes_pixel_mask = "pixel_mask" in inspect.signature(model.forward).parameters
        # Why an image gives no cut-out: listed with the skipped images.
        self.empty_reason = f"no object scoring {min_score} or more"
        self._outputs = MASK_CLASSIFICATION.get(model.config.model_type)

    def __call__(self, rgba: np.ndarray, has_alpha: bool = False) -> list[Region]:
        """One image's regions (``segment.Segmenter``'s signature); raises ``ValueError``."""
        (result,) = self.segment_batch([rgba])
        if isinstance(result, Exception):
            raise result
        return result

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[list[Region] | ValueError]:
        """Each image's regions, or the ``ValueError`` saying why it could not be segmented.

        Args:
          images: [H, W, 3 or 4] uint8 each (a fourth channel is ignored).
        """
        torch = _torch()
        results: list = [None] * len(images)
        groups: dict[tuple, list[tuple[int, dict]]] = {}
        for index, image in enumerate(images):
            try:
                inputs = self._preprocess(image)
            except (ValueError, TypeError, RuntimeError) as error:
                results[index] = ValueError(f"the model's image processor failed: {error}")
                continue
            groups.setdefault(tuple(inputs["pixel_values"].shape), []).append((index, inputs))
        for members in groups.values():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start : start + self.batch_size]
                try:
                    with torch.inference_mode():
                        outputs = self._forward([inputs for _, inputs in chunk])
                        for row, (index, inputs) in enumerate(chunk):
                            shape = images[index].shape[:2]
                            results[index] = self._regions(outputs, row, inputs, shape)
                except RuntimeError as error:
                    reason = (str(error).strip().splitlines() or ["?"])[0][:160]
                    for index, _ in chunk:
                        results[index] = ValueError(f"the model failed: {reason}")
        return results

    def _preprocess(self, image: np.ndarray) -> dict:
        rgb = np.ascontiguousarray(np.asarray(image)[..., :3], np.uint8)
        options = {"return_tensors": "pt", "input_data_format": "channels_last"}
        # A centre crop would leave the image's edges out of the label map.
        if getattr(self.processor, "do_center_crop", False):
            options["do_center_crop"] = False
        inputs = self.processor(images=rgb, **options)
        return {k: v for k, v in inputs.items() if k in ("pixel_values", "pixel_mask")}

    def _forward(self, batch: list[dict]):
        torch = _torch()
        pixels = torch.cat([b["pixel_values"] for b in batch]).to(self.device)
        arguments = {"pixel_values": pixels}
        if self._takes_pixel_mask and all("pixel_mask" in b for b in batch):
            arguments["pixel_mask"] = torch.cat([b["pixel_mask"] for b in batch]).to(self.device)
        return self.model(**arguments)

    def _regions(self, outputs, row: int, inputs: dict, shape: tuple[int, int]) -> list[Region]:
        if self.kind == "semantic":
            label_map, confidence = upsampled_labels(outputs.logits[row], shape)
            return semantic_regions(
                label_map,
                confidence,
                self.id2label,
                class_ids=self.class_ids,
                min_score=self.min_score,
                min_share=self.min_share,
            )
        class_key, mask_key = self._outputs
        masks = getattr(outputs, mask_key)[row]
        if "pixel_mask" in inputs:  # only the image's own part of a padded input
            valid = inputs["pixel_mask"][0]
            rows = int(valid.any(1).sum()) / valid.shape[0]
            cols = int(valid.any(0).sum()) / valid.shape[1]
            height = max(1, round(rows * masks.shape[1]))
            masks = masks[:, :height, : max(1, round(cols * masks.shape[2]))]
        return instance_regions(
            getattr(outputs, class_key)[row].float().cpu().numpy(),
            masks.float().cpu().numpy(),
            self.id2label,
            shape,
            class_ids=self.class_ids,
            min_score=self.min_score,
            mask_threshold=self.threshold,
            min_share=self.min_share,
        )


def upsampled_labels(logits, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-class logits [C, h, w] (a torch tensor) -> the label map and confidence at ``shape``.

    As transformers' ``post_process_semantic_segmentation``: the logits are resized
    bilinearly (``align_corners=False``) and each pixel takes its largest class; the
    confidence is that class's softmax probability. Bilinear resizing acts on each class
    alone, so ``CLASS_CHUNK`` classes at a time give the same result in bounded memory.

    Returns:
      ([H, W] int32 class ids, [H, W] float32 probabilities) as NumPy arrays.
    """
    torch = _torch()
    functional = torch.nn.functional
    logits = logits.float()
    best = torch.full(shape, -torch.inf, device=logits.device)
    label = torch.zeros(shape, dtype=torch.int64, device=logits.device)
    total = torch.full(shape, -torch.inf, device=logits.device)
    for start in range(0, logits.shape[0], CLASS_CHUNK):
        part = functional.interpolate(
            logits[None, start : start + CLASS_CHUNK],
            size=shape,
            mode="bilinear",
            align_corners=False,
        )[0]
        value, index = part.max(0)
        better = value > best
        label = torch.where(better, index + start, label)
        best = torch.maximum(best, value)
        total = torch.logaddexp(total, torch.logsumexp(part, 0))
    confidence = torch.exp(best - total)
    return label.to(torch.int32).cpu().numpy(), confidence.cpu().numpy()
