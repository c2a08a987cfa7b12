"""Canvas backgrounds: a solid colour, noise, or an image stretched over the canvas.

``make_background`` builds one at any size; ``check_background`` refuses a bad spec before
anything slow loads. A noise field is drawn once at the size the collage is optimised on
(``field_shape``) and enlarged for the final render, so the saved picture shows the very
noise the collage was optimised over.
"""

from __future__ import annotations

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

NAMED_COLOURS = {
    "black": (0.0, 0.0, 0.0),
    "white": (1.0, 1.0, 1.0),
    "grey": (0.5, 0.5, 0.5),
    "gray": (0.5, 0.5, 0.5),
}


def parse_colour(spec: str) -> tuple[float, float, float] | None:
    """'black', '#rrggbb' or 'r,g,b' (0-255 or 0-1) -> RGB floats in [0, 1]; None if not one."""
    spec = spec.strip().lower()
    if spec in NAMED_COLOURS:
        return NAMED_COLOURS[spec]
    if re.fullmatch(r"#[0-9a-f]{6}", spec):
        return tuple(int(spec[i : i + 2], 16) / 255.0 for i in (1, 3, 5))
    parts = spec.split(",")
    if len(parts) == 3:
        try:
            values = [float(p) for p in parts]
        except ValueError:
            return None
        scale = 255.0 if max(values) > 1.0 else 1.0
        if all(0.0 <= v <= scale for v in values):
            return tuple(v / scale for v in values)
    return None


def make_background(
    spec: str,
    height: int,
    width: int,
    *,
    key: jax.Array | None = None,
    field_shape: tuple[int, int] | None = None,
):
    """[H, W, 3] float32 background from a spec.

    Args:
      spec: a colour ("black", "white", "#102030", "16,32,48"), "noise" (uniform RGB noise,
        seeded by ``key``), or the path of an image (resized to cover the canvas).
      height, width: size in pixels.
      key: PRNG key for "noise".
      field_shape: (rows, columns) the noise is drawn at, then enlarged to ``height x width``
        by nearest neighbour: the optimised canvas's shape, so that a final render at any
        size shows the same field (None: ``(height, width)``).

    Raises:
      ValueError: the spec is neither a colour, "noise", nor a readable image.
    """
    colour = parse_colour(spec)
    if colour is not None:
        return jnp.broadcast_to(jnp.asarray(colour, jnp.float32), (height, width, 3))
    if spec.strip().lower() == "noise":
        key = jax.random.key(0) if key is None else key
        rows, cols = (height, width) if field_shape is None else field_shape
        field = jax.random.uniform(key, (rows, cols, 3), jnp.float32)
        if (rows, cols) == (height, width):
            return field
        # Nearest neighbour keeps every noise value as drawn (an interpolation would blur the
        # field CLIP saw); each output pixel takes the field pixel its centre falls in.
        row = (np.arange(height) + 0.5) * rows // height
        col = (np.arange(width) + 0.5) * cols // width
        return field[row.astype(np.int32)][:, col.astype(np.int32)]
    if os.path.isfile(spec):
        return jnp.asarray(load_background_image(spec, height, width))
    raise ValueError(_not_a_background(spec))


def check_background(spec: str) -> None:
    """Raises the ``make_background`` error for a bad spec without decoding an image.

    Raises:
      ValueError: the spec is neither a colour, "noise", nor an image file PIL can open.
    """
    if parse_colour(spec) is not None or spec.strip().lower() == "noise":
        return
    if not os.path.isfile(spec):
        raise ValueError(_not_a_background(spec))
    try:
        with Image.open(spec) as image:
            image.verify()
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"background image {spec!r} cannot be read ({error}).") from None


def _not_a_background(spec: str) -> str:
    return (
        f"background {spec!r} is not a colour ('black', '#rrggbb', 'r,g,b'), 'noise', or an "
        "existing image file: pass one of those."
    )


def load_background_image(path: str, height: int, width: int) -> np.ndarray:
    """An image file stretched to [H, W, 3] float32 in [0, 1]."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    except (OSError, Image.DecompressionBombError) as error:
        raise ValueError(f"background image {path!r} cannot be read ({error}).") from None
    return np.asarray(rgb, np.float32) / 255.0
