"""Zero-shot colour and shape accuracy of a CLIP on the demo data's single-shape scenes.

``zero_shot_prompts`` are the class prompts "a {colour} {shape}"; ``zero_shot_accuracy``
scores images against all of them and marginalises the other attribute. The training tool
reports it during training and ``tests/test_demo_clip.py`` checks the bundled model with it;
``read_colour_and_shape`` is the reading itself (``benchmarks/judge.py`` reads collages with
it). Another measure of a CLIP on this data goes here beside it.
"""

from __future__ import annotations

import jax
import numpy as np

from clipclop_jax.guidance.demo_data.captions import COLOUR_NAMES, article
from clipclop_jax.guidance.demo_data.drawing import SHAPES
from clipclop_jax.guidance.demo_data.scenes import Batch


def zero_shot_prompts() -> list[str]:
    """The C x S prompts "a {colour} {shape}", colour-major, used for zero-shot scoring."""
    return [f"{article(c)} {c} {s}" for c in COLOUR_NAMES for s in SHAPES]


def zero_shot_accuracy(
    image_embeds: jax.typing.ArrayLike,
    batch: Batch,
    embed_texts,
    *,
    scale: float = 100.0,
) -> dict[str, float]:
    """Colour and shape accuracy of a CLIP on single-shape scenes, zero-shot.

    Each image is scored against every prompt "a {colour} {shape}"; a colour's score is the
    log-sum-exp of its prompts over shapes (and a shape's over colours), so the prediction
    marginalises the other attribute instead of requiring both to be right.

    Args:
      image_embeds: [N, D] L2-normalised embeddings of ``draw(batch.scenes, ...)``.
      batch: the N scenes; only the first salient object's labels are used, so pass
        single-shape scenes (``sample_batch(..., kinds=(1, 0, 0))``).
      embed_texts: callable list[str] -> [T, D] L2-normalised text embeddings.
      scale: logit scale (CLIP's 100).

    Returns:
      {"colour": accuracy, "shape": accuracy} as floats in [0, 1].
    """
    text = embed_texts(zero_shot_prompts())
    colour, shape = read_colour_and_shape(image_embeds, text, scale=scale)
    return {
        "colour": float(np.mean(colour == batch.labels.colour[:, 0])),
        "shape": float(np.mean(shape == batch.labels.shape[:, 0])),
    }


def read_colour_and_shape(
    image_embeds: jax.typing.ArrayLike, text_embeds: jax.typing.ArrayLike, *, scale: float = 100.0
) -> tuple[np.ndarray, np.ndarray]:
    """The colour and shape a CLIP reads in each image, zero-shot.

    Args:
      image_embeds: [N, D] L2-normalised image embeddings.
      text_embeds: [C * S, D] L2-normalised embeddings of ``zero_shot_prompts()``.
      scale: logit scale (CLIP's 100).

    Returns:
      ([N] colour indices into ``COLOUR_NAMES``, [N] shape indices into ``SHAPES``): each the
      best log-sum-exp of its prompts over the other attribute.
    """
    logits = scale * np.asarray(image_embeds, np.float32) @ np.asarray(text_embeds, np.float32).T
    logits = logits.reshape(len(logits), len(COLOUR_NAMES), len(SHAPES))
    colour_score = np.asarray(jax.nn.logsumexp(logits, axis=2))
    shape_score = np.asarray(jax.nn.logsumexp(logits, axis=1))
    return colour_score.argmax(1), shape_score.argmax(1)
