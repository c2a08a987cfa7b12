"""Samples batches of captioned scenes (NumPy, seeded): what to draw, and what is said of it.

Three kinds of scene (``SCENE_KINDS``):

* **single**: one shape with a known size class and position class;
* **pair**: two different shapes, side by side or one above the other;
* **group**: many overlapping, rotated, partly cut shapes of one kind and colour (or one
  kind in many colours, or one colour in many kinds), composited like the collage renderer
  ("over", additive "transparency" or alpha-weighted "masked_transparency"). These look like
  what the collage optimiser makes from white cut-outs tinted by RGB gains.

Each also gets a background (black, muted, gradient or pale, sometimes textured) and, by
``augment`` strength, a near-identity homography, an edge softness and a colour cast.
``sample_batch`` returns a ``Batch``: the ``Scenes`` to draw with ``drawing.draw``, their
labels, one caption each and what it mentions. The batch is a pure function of the
generator's state, so a test can redraw the same scenes.

A new kind of scene is a name in ``SCENE_KINDS``, a branch in ``sample_batch`` and a
probability in its ``kinds``.
"""

from __future__ import annotations

import colorsys
from typing import NamedTuple

import numpy as np

from clipclop_jax.guidance.demo_data.captions import (
    COLOUR_NAMES,
    COLOURS,
    MAX_MENTIONS,
    PREFIXES,
    Mentions,
    noun_phrase,
)
from clipclop_jax.guidance.demo_data.drawing import MAX_OBJECTS, SHAPES, Scenes

SCENE_KINDS = ("single", "pair", "group")


class Batch(NamedTuple):
    scenes: Scenes
    labels: Mentions
    captions: list[str]
    mentioned: Mentions
    kind: np.ndarray  # [B] int32 index into SCENE_KINDS


def sample_colour(rng: np.random.Generator, name: str) -> np.ndarray:
    """[3] float32 RGB of one random shade of a named colour."""
    hue, jitter, (s0, s1), (v0, v1) = COLOURS[name]
    h = ((hue + rng.uniform(-jitter, jitter)) % 360.0) / 360.0
    return np.array(colorsys.hsv_to_rgb(h, rng.uniform(s0, s1), rng.uniform(v0, v1)), np.float32)


def _background(rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray]:
    """Two gradient colours, a gradient angle and a texture; dark or muted, rarely pale."""
    kind = rng.choice(4, p=[0.4, 0.3, 0.2, 0.1])  # black, dark/muted, gradient, pale
    noise = np.zeros((8, 8, 3), np.float32)
    if kind == 0:
        colours = np.zeros((2, 3), np.float32) + rng.uniform(0.0, 0.08)
    else:

        def muted() -> np.ndarray:
            h, s, v = rng.uniform(), rng.uniform(0.0, 0.45), rng.uniform(0.05, 0.45)
            return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32)

        colours = np.stack([muted(), muted()])
        if kind != 2:
            colours[1] = colours[0]
        if kind == 3:  # pale grey/cream: only coloured shapes stand out on it
            colours[:] = rng.uniform(0.75, 0.95) - rng.uniform(0.0, 0.08, size=3)
    if rng.uniform() < 0.3:
        noise = rng.normal(0.0, rng.uniform(0.02, 0.08), size=(8, 8, 3)).astype(np.float32)
    return colours.astype(np.float32), rng.uniform(0, 2 * np.pi), noise


def _homography(rng: np.random.Generator, strength: float) -> np.ndarray:
    """[3, 3] near-identity map from output to scene coordinates (zoom, shift, tilt)."""
    zoom = np.exp(rng.uniform(-0.15, 0.15) * strength)
    angle = rng.uniform(-0.12, 0.12) * strength
    c, s = np.cos(angle), np.sin(angle)
    shear = rng.uniform(-0.08, 0.08, size=2) * strength
    m = np.eye(3)
    m[:2, :2] = zoom * np.array([[c, -s], [s, c]]) @ np.array([[1, shear[0]], [shear[1], 1]])
    m[:2, 2] = rng.uniform(-0.08, 0.08, size=2) * strength
    m[2, :2] = rng.uniform(-0.12, 0.12, size=2) * strength
    return m.astype(np.float32)


_SIZE_RADII = {0: (0.18, 0.27), 1: (0.3, 0.42), 2: (0.5, 0.7)}
_POSITION_BOXES = {  # (x range, y range) of a centre with that position class
    0: ((-0.62, -0.42), (-0.18, 0.18)),
    1: ((0.42, 0.62), (-0.18, 0.18)),
    2: ((-0.18, 0.18), (-0.62, -0.42)),
    3: ((-0.18, 0.18), (0.42, 0.62)),
    4: ((-0.12, 0.12), (-0.12, 0.12)),
}


def _empty_scene(b: int) -> dict[str, np.ndarray]:
    k = MAX_OBJECTS
    return {
        "shape": np.zeros((b, k), np.int32),
        "colour": np.zeros((b, k, 3), np.float32),
        "centre": np.zeros((b, k, 2), np.float32),
        "radius": np.full((b, k), 0.1, np.float32),
        "angle": np.zeros((b, k), np.float32),
        "squeeze": np.ones((b, k), np.float32),
        "alpha": np.zeros((b, k), np.float32),
        "composite": np.zeros((b,), np.int32),
        "background": np.zeros((b, 2, 3), np.float32),
        "gradient_angle": np.zeros((b,), np.float32),
        "noise": np.zeros((b, 8, 8, 3), np.float32),
        "homography": np.tile(np.eye(3, dtype=np.float32), (b, 1, 1)),
        "softness": np.ones((b,), np.float32),
        "gain": np.ones((b, 3), np.float32),
    }


def sample_batch(
    rng: np.random.Generator,
    batch_size: int,
    *,
    kinds: tuple[float, float, float] = (0.35, 0.25, 0.4),
    augment: float = 1.0,
) -> Batch:
    """Samples ``batch_size`` scenes, their labels and one caption each.

    Args:
      rng: NumPy generator; the batch is a pure function of its state.
      batch_size: B.
      kinds: probabilities of single, pair and group scenes.
      augment: strength of the random warp, colour cast and softness (0 = none).

    Returns:
      A ``Batch``; draw its images with ``draw(batch.scenes, size)``.
    """
    b = batch_size
    s = _empty_scene(b)
    lab = {f: np.full((b, MAX_MENTIONS), -1, np.int32) for f in Mentions._fields[:4]}
    lab["count"] = np.zeros((b,), np.int32)
    men = {f: np.full((b, MAX_MENTIONS), -1, np.int32) for f in Mentions._fields[:4]}
    men["count"] = np.zeros((b,), np.int32)
    kind = rng.choice(3, size=b, p=np.asarray(kinds) / np.sum(kinds)).astype(np.int32)
    captions = []
    n_colours, n_shapes = len(COLOUR_NAMES), len(SHAPES)
    for i in range(b):
        bg, s["gradient_angle"][i], s["noise"][i] = _background(rng)
        s["background"][i] = bg
        pale = bg.mean() > 0.6
        allowed = [c for c in range(n_colours) if not (pale and COLOUR_NAMES[c] == "white")]
        s["homography"][i] = _homography(rng, augment)
        s["softness"][i] = 1.0 + augment * rng.exponential(0.4)
        s["gain"][i] = 1.0 + augment * rng.uniform(-0.08, 0.08, size=3)
        if kind[i] == 0:  # single
            c, sh = int(rng.choice(allowed)), int(rng.integers(n_shapes))
            size = int(rng.integers(3))
            pos = 4 if size == 2 else int(rng.integers(5))
            (x0, x1), (y0, y1) = _POSITION_BOXES[pos]
            s["shape"][i, 0], s["colour"][i, 0] = sh, sample_colour(rng, COLOUR_NAMES[c])
            s["centre"][i, 0] = rng.uniform(x0, x1), rng.uniform(y0, y1)
            s["radius"][i, 0] = rng.uniform(*_SIZE_RADII[size])
            s["angle"][i, 0] = rng.uniform(0, 2 * np.pi) if rng.uniform() < 0.6 else 0.0
            s["squeeze"][i, 0] = np.exp(rng.uniform(-0.15, 0.15))
            s["alpha"][i, 0] = 1.0 if rng.uniform() < 0.8 else rng.uniform(0.7, 1.0)
            objs = [(c, sh, size, pos)]
        elif kind[i] == 1:  # pair
            c1, c2 = (int(x) for x in rng.choice(allowed, size=2))
            sh1, sh2 = (int(x) for x in rng.integers(n_shapes, size=2))
            if (c1, sh1) == (c2, sh2):
                sh2 = (sh2 + 1 + int(rng.integers(n_shapes - 1))) % n_shapes
            poses = (0, 1) if rng.uniform() < 0.6 else (2, 3)
            objs = []
            for j, (c, sh, pos) in enumerate(((c1, sh1, poses[0]), (c2, sh2, poses[1]))):
                size = int(rng.integers(2))
                (x0, x1), (y0, y1) = _POSITION_BOXES[pos]
                s["shape"][i, j], s["colour"][i, j] = sh, sample_colour(rng, COLOUR_NAMES[c])
                s["centre"][i, j] = rng.uniform(x0, x1), rng.uniform(y0, y1)
                s["radius"][i, j] = rng.uniform(*_SIZE_RADII[size]) * 0.9
                s["angle"][i, j] = rng.uniform(0, 2 * np.pi) if rng.uniform() < 0.6 else 0.0
                s["squeeze"][i, j] = np.exp(rng.uniform(-0.15, 0.15))
                s["alpha"][i, j] = 1.0
                objs.append((c, sh, size, pos))
        else:  # group: many overlapping cut-outs, like a collage
            variant = rng.choice(3, p=[0.6, 0.2, 0.2])  # pure, mixed colours, mixed shapes
            c, sh = int(rng.choice(allowed)), int(rng.integers(n_shapes))
            n = int(rng.integers(3, MAX_OBJECTS + 1))
            spread = rng.uniform(0.3, 0.9)
            scale = rng.uniform(0.15, 0.45)
            for j in range(n):
                cj = int(rng.choice(allowed)) if variant == 1 else c
                shj = int(rng.integers(n_shapes)) if variant == 2 else sh
                s["shape"][i, j], s["colour"][i, j] = shj, sample_colour(rng, COLOUR_NAMES[cj])
                s["centre"][i, j] = rng.uniform(-spread, spread, size=2)
                s["radius"][i, j] = scale * np.exp(rng.uniform(-0.35, 0.35))
                s["angle"][i, j] = rng.uniform(0, 2 * np.pi)
                s["squeeze"][i, j] = np.exp(rng.uniform(-0.25, 0.25))
                s["alpha"][i, j] = rng.uniform(0.6, 1.0)
            # Additive light washes out to white on a pale background: keep it for dark ones.
            s["composite"][i] = rng.choice(3, p=[0.4, 0.3, 0.3]) if bg.mean() < 0.3 else 0
            objs = [(c if variant != 1 else -1, sh if variant != 2 else -1, -1, -1)]
        for j, (c, sh, size, pos) in enumerate(objs):
            lab["colour"][i, j], lab["shape"][i, j] = c, sh
            lab["size"][i, j], lab["position"][i, j] = size, pos
        lab["count"][i] = len(objs)
        # Caption: name one or both salient objects.
        prefix = str(rng.choice(PREFIXES))
        if len(objs) == 2 and rng.uniform() < 0.65:
            (ta, ma), (tb, mb) = (noun_phrase(rng, *o) for o in objs)
            if rng.uniform() < 0.5:
                (ta, ma), (tb, mb) = (tb, mb), (ta, ma)
            text, said = f"{ta} and {tb}", [ma, mb]
        else:
            o = objs[int(rng.integers(len(objs)))]
            text, m = noun_phrase(rng, *o, plural=kind[i] == 2)
            said = [m]
        captions.append(prefix + text)
        for j, m in enumerate(said):
            for f, v in zip(Mentions._fields[:4], m, strict=True):
                men[f][i, j] = v
        men["count"][i] = len(said)
    return Batch(Scenes(**s), Mentions(**lab), captions, Mentions(**men), kind)
