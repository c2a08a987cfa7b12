"""The built-in patch libraries, made offline: ``shapes`` and ``photos``.

* ``shapes``: white shapes and strokes on transparency, drawn with Pillow at 4x and
  downsampled (antialiased). The colour transform tints them; the bundled demo CLIP knows
  their names (circle, square, triangle, star, bar, ring, cross).
* ``painted``: the seven shapes the demo CLIP knows, each painted in its eight colours (56
  cut-outs of fixed colour). With ``colour_space="none"`` gradients can move, scale and
  turn them but not recolour them: which cut-outs a collage shows is left to evolution.
* ``photos``: object-like cut-outs of the colour photographs that scikit-image's wheel
  ships, segmented into SLIC superpixels with feathered edges.

Both are deterministic; ``load.load_library`` caches what they make.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from clipclop_jax.library import segment
from clipclop_jax.library.cutouts import crop_to_alpha

# Bump when what these functions draw changes: it invalidates cached copies.
VERSION = 2
SHAPE_SIDE = 256
SUPERSAMPLE = 4
# The demo CLIP's colour and shape words; each RGB lies inside the HSV range that
# guidance.demo_data.captions.COLOURS gives that colour name, so the demo model names them right.
PAINTS = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 190, 50),
    "blue": (40, 80, 230),
    "purple": (140, 50, 200),
    "pink": (250, 170, 210),
    "white": (245, 245, 245),
}
PAINTED_SHAPES = ("circle", "square", "triangle", "star", "bar", "ring", "cross")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle")
SEGMENTS_PER_PHOTO = 24
MAX_PATCHES_PER_PHOTO = 10
# Superpixels smaller than this share of the photo are fragments, larger ones are scenery.
MIN_SEGMENT_SHARE, MAX_SEGMENT_SHARE = 0.01, 0.2
FEATHER_PIXELS = 3.0


def cutouts(name: str) -> tuple[list[np.ndarray], list[str]]:
    """The cut-outs ([h, w, 4] uint8) and names of built-in library ``name``."""
    if name == "shapes":
        return shape_cutouts()
    if name == "painted":
        return painted_cutouts()
    if name == "photos":
        return photo_cutouts()
    raise ValueError(f"no built-in library {name!r}: use 'shapes', 'painted' or 'photos'.")


def _polygon(points: int, radius: float, *, inner: float | None = None, turn: float = 0.0):
    """Vertices of a regular polygon (or a star with ``inner`` radius) around (0, 0)."""
    count = points * (2 if inner else 1)
    out = []
    for k in range(count):
        r = radius if not inner or k % 2 == 0 else inner
        angle = turn - math.pi / 2 + 2 * math.pi * k / count
        out.append((r * math.cos(angle), r * math.sin(angle)))
    return out


def _shape_painters():
    """name -> function(draw, centre c, radius r, stroke width w) drawing in white."""

    def poly(vertices):
        return lambda d, c, r, w: d.polygon([(c + x * r, c + y * r) for x, y in vertices], 255)

    def box(half_w, half_h):
        return lambda d, c, r, w: d.rectangle(
            (c - half_w * r, c - half_h * r, c + half_w * r, c + half_h * r), 255
        )

    def ellipse(half_w, half_h):
        return lambda d, c, r, w: d.ellipse(
            (c - half_w * r, c - half_h * r, c + half_w * r, c + half_h * r), 255
        )

    def ring(d, c, r, w):
        d.ellipse((c - r, c - r, c + r, c + r), 255)
        d.ellipse((c - 0.6 * r, c - 0.6 * r, c + 0.6 * r, c + 0.6 * r), 0)

    def cross(d, c, r, w):
        box(1.0, 0.25)(d, c, r, w)
        box(0.25, 1.0)(d, c, r, w)

    def crescent(d, c, r, w):
        d.ellipse((c - r, c - r, c + r, c + r), 255)
        d.ellipse((c - 0.45 * r, c - 1.05 * r, c + 1.4 * r, c + 0.9 * r), 0)

    def stroke(d, c, r, w):
        d.line((c - r, c + 0.6 * r, c + r, c - 0.6 * r), 255, width=int(w))

    def arc(d, c, r, w):
        d.arc((c - r, c - r, c + r, c + r), 200, 340, 255, width=int(w))

    def wave(d, c, r, w):
        points = [
            (c + r * (t / 20 - 1), c + 0.4 * r * math.sin(t / 20 * 2 * math.pi)) for t in range(41)
        ]
        d.line(points, 255, width=int(w), joint="curve")

    return {
        "circle": ellipse(1.0, 1.0),
        "ellipse": ellipse(1.0, 0.55),
        "square": box(0.8, 0.8),
        "rectangle": box(1.0, 0.5),
        "triangle": poly(_polygon(3, 1.0, turn=0.0)),
        "diamond": poly([(0, -1), (0.6, 0), (0, 1), (-0.6, 0)]),
        "hexagon": poly(_polygon(6, 1.0)),
        "star": poly(_polygon(5, 1.0, inner=0.45)),
        "burst": poly(_polygon(8, 1.0, inner=0.6)),
        "bar": box(1.0, 0.18),
        "ring": ring,
        "cross": cross,
        "crescent": crescent,
        "stroke": stroke,
        "arc": arc,
        "wave": wave,
    }


SHAPE_NAMES = tuple(_shape_painters())


def draw_shape(name: str, side: int = SHAPE_SIDE) -> np.ndarray:
    """One white shape on transparency, [side, side, 4] uint8, antialiased."""
    big = side * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    centre, radius = big / 2, big * 0.45
    _shape_painters()[name](draw, centre, radius, big * 0.09)
    alpha = np.asarray(mask.resize((side, side), Image.Resampling.LANCZOS), np.uint8)
    rgba = np.full((side, side, 4), 255, np.uint8)
    rgba[..., 3] = alpha
    return rgba


def shape_cutouts() -> tuple[list[np.ndarray], list[str]]:
    cutouts = [crop_to_alpha(draw_shape(name)) for name in SHAPE_NAMES]
    return cutouts, [f"shapes/{name}" for name in SHAPE_NAMES]


def painted_cutouts() -> tuple[list[np.ndarray], list[str]]:
    cutouts, names = [], []
    for shape in PAINTED_SHAPES:
        white = crop_to_alpha(draw_shape(shape))
        for colour, rgb in PAINTS.items():
            painted = white.copy()
            painted[..., :3] = rgb
            cutouts.append(painted)
            names.append(f"painted/{colour}-{shape}")
    return cutouts, names


def photo_cutouts() -> tuple[list[np.ndarray], list[str]]:
    try:
        import skimage.data
    except ImportError:
        raise ValueError(
            "the 'photos' library needs scikit-image: pip install 'clipclop-jax[photos]'."
        ) from None
    cutouts, names = [], []
    for photo in PHOTOS:
        image = getattr(skimage.data, photo)()
        image = image[0] if isinstance(image, tuple) else image  # stereo pairs: left view
        image = np.asarray(image[..., :3], np.uint8)
        labels = segment.superpixel_labels(image, num_segments=SEGMENTS_PER_PHOTO)
        keep = segment.select_regions(
            labels,
            min_share=MIN_SEGMENT_SHARE,
            max_share=MAX_SEGMENT_SHARE,
            max_regions=MAX_PATCHES_PER_PHOTO,
        )
        for label in keep:
            mask = np.where(labels == label, 255, 0)
            cutout = segment.cutout_from_mask(image, mask, feather_pixels=FEATHER_PIXELS)
            if cutout is not None:
                cutouts.append(cutout)
                names.append(f"photos/{photo}#{label}")
    return cutouts, names
