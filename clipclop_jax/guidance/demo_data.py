"""Procedural captioned images for training and testing the bundled demo CLIP.

Each image holds coloured shapes (circles, squares, triangles, stars, bars, rings, crosses)
drawn analytically with antialiased edges over a black, coloured, gradient or noisy
background, then warped by a random near-identity homography (the small crops, zooms and
perspective that CLIP augmentations make). Three kinds of scene:

* **single**: one shape with a known size class and position class;
* **pair**: two different shapes, side by side or one above the other;
* **group**: many overlapping, rotated, partly cut shapes of one kind and colour (or one
  kind in many colours, or one colour in many kinds), composited like the collage renderer
  ("over", additive "transparency" or alpha-weighted "masked_transparency"). These look like
  what the collage optimiser makes from white cut-outs tinted by RGB gains.

Sampling (NumPy, seeded) is apart from drawing (JAX, jit-able), so the training loop draws
on device and a test can redraw the same scenes. Every scene carries *labels* (what is in it)
and every caption carries the attributes it *mentions*; ``caption_matches`` says which
captions are true of which images, which the contrastive loss uses as multiple positives.
"""

from __future__ import annotations

import colorsys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# (hue in degrees, hue jitter, saturation range, value range); white has no hue.
COLOURS: dict[str, tuple[float, float, tuple[float, float], tuple[float, float]]] = {
    "red": (0.0, 7.0, (0.75, 1.0), (0.65, 1.0)),
    "orange": (28.0, 5.0, (0.8, 1.0), (0.85, 1.0)),
    "yellow": (56.0, 5.0, (0.7, 1.0), (0.85, 1.0)),
    "green": (120.0, 22.0, (0.65, 1.0), (0.55, 1.0)),
    "blue": (225.0, 15.0, (0.7, 1.0), (0.7, 1.0)),
    "purple": (280.0, 12.0, (0.6, 0.95), (0.55, 0.95)),
    "pink": (325.0, 10.0, (0.3, 0.55), (0.9, 1.0)),
    "white": (0.0, 0.0, (0.0, 0.08), (0.88, 1.0)),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "bar", "ring", "cross")
SHAPE_PLURALS: dict[str, str] = {s: s + ("es" if s.endswith("s") else "s") for s in SHAPES}
SIZES: tuple[str, ...] = ("small", "medium", "large")  # captions never say "medium"
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left",),
    "right": ("on the right",),
    "top": ("at the top",),
    "bottom": ("at the bottom",),
    "centre": ("in the centre", "in the middle", "in the center"),
}
PREFIXES: tuple[str, ...] = ("", "", "", "a photo of ", "a picture of ", "an image of ")

MAX_OBJECTS = 8  # shapes per image (padded with invisible ones)
MAX_MENTIONS = 2  # objects a caption or a label names
SCENE_KINDS = ("single", "pair", "group")
COMPOSITES = ("over", "transparency", "masked_transparency")
_POLYGON_VERTICES = 12


def _regular_star(points: int, outer: float, inner: float) -> np.ndarray:
    angles = np.pi * np.arange(2 * points) / points - np.pi / 2  # a point upwards
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=-1)


def _polygons() -> np.ndarray:
    """[S, 12, 2] float32 outlines in unit shape space (x right, y down), padded by repeats."""
    a, w = 1.0, 0.3  # cross arm length and half-width
    outlines = {
        "square": np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]]),
        "triangle": _regular_star(3, 1.0, 1.0)[::2] + np.array([0.0, 0.12]),
        "star": _regular_star(5, 1.0, 0.42),
        "bar": np.array([[-1.0, -0.28], [1.0, -0.28], [1.0, 0.28], [-1.0, 0.28]]),
        "cross": np.array(
            [[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w], [w, a], [-w, a], [-w, w]]
            + [[-a, w], [-a, -w], [-w, -w]]
        ),
    }
    table = np.zeros((len(SHAPES), _POLYGON_VERTICES, 2), np.float32)
    for i, name in enumerate(SHAPES):
        outline = outlines.get(name, np.zeros((1, 2)))
        # Repeating the last vertex adds zero-length edges, which change neither the
        # distance nor the inside test.
        table[i] = np.concatenate(
            [outline, np.repeat(outline[-1:], _POLYGON_VERTICES - len(outline), axis=0)]
        )
    return table


POLYGONS = _polygons()


class Scenes(NamedTuple):
    """A batch of B scenes to draw; K = MAX_OBJECTS, drawn in index order.

    Attributes:
      shape: [B, K] int32 index into SHAPES.
      colour: [B, K, 3] float32 RGB in [0, 1].
      centre: [B, K, 2] float32 (x, y) in [-1, 1] canvas units, y down.
      radius: [B, K] float32 shape radius as a fraction of the half canvas.
      angle: [B, K] float32 rotation in radians.
      squeeze: [B, K] float32 ratio of y to x scale.
      alpha: [B, K] float32 opacity in [0, 1]; 0 for padding.
      composite: [B] int32 index into COMPOSITES.
      background: [B, 2, 3] float32 the two colours of a linear gradient.
      gradient_angle: [B] float32 radians.
      noise: [B, 8, 8, 3] float32 low-frequency background texture, added.
      homography: [B, 3, 3] float32 maps output pixel coordinates to scene coordinates.
      softness: [B] float32 edge width in output pixels (>= 1).
      gain: [B, 3] float32 colour cast, multiplied.
    """

    shape: np.ndarray
    colour: np.ndarray
    centre: np.ndarray
    radius: np.ndarray
    angle: np.ndarray
    squeeze: np.ndarray
    alpha: np.ndarray
    composite: np.ndarray
    background: np.ndarray
    gradient_angle: np.ndarray
    noise: np.ndarray
    homography: np.ndarray
    softness: np.ndarray
    gain: np.ndarray


class Mentions(NamedTuple):
    """Up to two objects, each by attribute indices; -1 means unknown / not mentioned.

    For an image label, the attributes its salient objects have; for a caption, those it
    states. All fields are [B, 2] int32 except ``count`` [B].
    """

    colour: np.ndarray
    shape: np.ndarray
    size: np.ndarray
    position: np.ndarray
    count: np.ndarray


class Batch(NamedTuple):
    scenes: Scenes
    labels: Mentions
    captions: list[str]
    mentioned: Mentions
    kind: np.ndarray  # [B] int32 index into SCENE_KINDS


def vocabulary() -> list[str]:
    """The caption words that get a token of their own in the demo tokenizer's merges.

    All caption words but "big" (a synonym of "large"), which the bundled tokenizer splits
    into sub-word pieces; adding it here changes the tokenizer, so retrain after doing so.
    """
    words = set(COLOUR_NAMES) | set(SHAPES) | set(SHAPE_PLURALS.values()) | {"small", "large"}
    for phrases in POSITION_PHRASES.values():
        for phrase in phrases:
            words.update(phrase.split())
    for prefix in PREFIXES:
        words.update(prefix.split())
    words.update(["a", "an", "and", "something", "object", "shape", "shapes", "many"])
    words.update(["lots", "of", "collage"])
    return sorted(words)


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


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _phrase(
    rng: np.random.Generator, colour: int, shape: int, size: int, pos: int, *, plural: bool = False
) -> tuple[str, tuple[int, int, int, int]]:
    """One noun phrase naming some of an object's attributes, and those it names."""
    mode = rng.choice(3, p=[0.55, 0.1, 0.35]) if colour >= 0 and shape >= 0 else None
    if shape < 0 or mode == 1:  # colour only
        name = COLOUR_NAMES[colour]
        if plural:
            text = rng.choice([name, f"{name} shapes", f"many {name} shapes", f"something {name}"])
        else:
            text = rng.choice([name, f"something {name}", f"a {name} shape", f"a {name} object"])
        return str(text), (colour, -1, -1, -1)
    said_colour = colour if (mode in (None, 0) and colour >= 0) else -1
    said_size = size if size in (0, 2) and rng.uniform() < 0.35 else -1
    said_pos = pos if pos >= 0 and rng.uniform() < 0.35 else -1
    words = []
    if said_size >= 0:
        words.append("small" if said_size == 0 else str(rng.choice(["large", "big"])))
    if said_colour >= 0:
        words.append(COLOUR_NAMES[said_colour])
    if plural and rng.uniform() < 0.7:
        words.append(SHAPE_PLURALS[SHAPES[shape]])
        text = " ".join(words)
        if rng.uniform() < 0.5:
            text = f"{rng.choice(['many', 'lots of', 'a collage of'])} {text}"
    else:
        words.append(SHAPES[shape])
        text = f"{_article(words[0])} {' '.join(words)}"
    if said_pos >= 0:
        text += " " + str(rng.choice(POSITION_PHRASES[POSITIONS[said_pos]]))
    return text, (said_colour, shape, said_size, said_pos)


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
            (ta, ma), (tb, mb) = (_phrase(rng, *o) for o in objs)
            if rng.uniform() < 0.5:
                (ta, ma), (tb, mb) = (tb, mb), (ta, ma)
            text, said = f"{ta} and {tb}", [ma, mb]
        else:
            o = objs[int(rng.integers(len(objs)))]
            text, m = _phrase(rng, *o, plural=kind[i] == 2)
            said = [m]
        captions.append(prefix + text)
        for j, m in enumerate(said):
            for f, v in zip(Mentions._fields[:4], m, strict=True):
                men[f][i, j] = v
        men["count"][i] = len(said)
    return Batch(Scenes(**s), Mentions(**lab), captions, Mentions(**men), kind)


def label_targets(labels: Mentions) -> tuple[np.ndarray, np.ndarray]:
    """Per-image class targets: ([B, num_colours], [B, num_shapes]) float32.

    Each row is uniform over the colours (shapes) of the image's salient objects, or all
    zeros where none is known (mixed groups).
    """
    known = np.arange(MAX_MENTIONS)[None, :] < labels.count[:, None]  # [B, 2]

    def one_hot(values: np.ndarray, n: int) -> np.ndarray:
        hot = (values[..., None] == np.arange(n)) & known[..., None] & (values[..., None] >= 0)
        present = hot.any(axis=1)  # [B, n]
        return present.astype(np.float32) / np.maximum(present.sum(1, keepdims=True), 1)

    return one_hot(labels.colour, len(COLOUR_NAMES)), one_hot(labels.shape, len(SHAPES))


def caption_matches(labels: Mentions, mentioned: Mentions) -> np.ndarray:
    """[B_images, B_captions] bool: caption j is true of image i.

    A caption is true when each object it mentions matches some salient object of the image
    in every attribute it states.
    """
    fields = Mentions._fields[:4]
    # [I, 1, 1, O] labels vs [1, J, M, 1] mentions.
    ok = np.ones((len(labels.count), len(mentioned.count), MAX_MENTIONS, MAX_MENTIONS), bool)
    for f in fields:
        have = getattr(labels, f)[:, None, None, :]
        said = getattr(mentioned, f)[None, :, :, None]
        ok &= (said < 0) | (said == have)
    ok &= (np.arange(MAX_MENTIONS) < labels.count[:, None])[:, None, None, :]
    satisfied = ok.any(axis=-1)  # [I, J, M]
    needed = np.arange(MAX_MENTIONS)[None, :] < mentioned.count[:, None]  # [J, M]
    return np.all(satisfied | ~needed[None], axis=-1)


def _polygon_sdf(p: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Signed distance from points p [..., 2] to a closed polygon [V, 2]; < 0 inside."""
    edges = np.roll(vertices, -1, axis=0) - vertices  # [V, 2]
    w = p[..., None, :] - vertices  # [..., V, 2]
    length2 = np.sum(edges * edges, axis=-1)
    t = np.clip(np.sum(w * edges, axis=-1) / np.maximum(length2, 1e-12), 0.0, 1.0)
    gap = w - t[..., None] * edges
    distance = np.sqrt(np.min(np.sum(gap * gap, axis=-1), axis=-1))
    # Crossing-number inside test along +x; zero-length edges never cross.
    y0, y1 = vertices[:, 1], vertices[:, 1] + edges[:, 1]
    straddles = (y0 <= p[..., None, 1]) != (y1 <= p[..., None, 1])
    dy = np.where(edges[:, 1] == 0, 1.0, edges[:, 1])
    x_cross = vertices[:, 0] + (p[..., None, 1] - y0) * edges[:, 0] / dy
    crossings = np.sum(straddles & (p[..., None, 0] < x_cross), axis=-1)
    return np.where(crossings % 2 == 1, -distance, distance)


def _exact_shape_sdf(q: np.ndarray, shape: int) -> np.ndarray:
    """Exact SDF in unit shape space of shape index ``shape`` at points q [..., 2]."""
    radius = np.sqrt(np.sum(q * q, axis=-1))
    if SHAPES[shape] == "circle":
        return radius - 0.85
    if SHAPES[shape] == "ring":
        return np.abs(radius - 0.72) - 0.22
    return _polygon_sdf(q, POLYGONS[shape])


_SDF_EXTENT = 1.25  # the tabulated square is [-extent, extent]^2 in unit shape space
_SDF_GRID = 96


def _sdf_table() -> np.ndarray:
    """[S, G, G] float32 signed distances on a grid, for bilinear lookup while drawing.

    The exact polygon distance costs ~12 edge tests per pixel and object; a table lookup
    costs four gathers, which keeps drawing well below the cost of a training step. The
    distance field is smooth, so bilinear interpolation of it stays accurate at the edge.
    """
    u = np.linspace(-_SDF_EXTENT, _SDF_EXTENT, _SDF_GRID, dtype=np.float32)
    grid = np.stack(np.meshgrid(u, u, indexing="xy"), axis=-1)
    table = np.stack([_exact_shape_sdf(grid, i) for i in range(len(SHAPES))])
    return table.astype(np.float32)


_SDF_TABLE = _sdf_table()  # ~0.3 MB, a few ms at import


def _shape_sdf(q: jax.Array, shape: jax.Array) -> jax.Array:
    """Approximate SDF of shape index ``shape`` (scalar) at points q [..., 2]."""
    table = jnp.asarray(_SDF_TABLE)[shape]  # [G, G], rows = y
    inside = jnp.clip(q, -_SDF_EXTENT, _SDF_EXTENT)
    # Outside the table, add the distance to it (exact far from the shape's corners).
    outside = jnp.sqrt(jnp.sum((q - inside) ** 2, axis=-1))
    f = (inside + _SDF_EXTENT) / (2 * _SDF_EXTENT) * (_SDF_GRID - 1)
    i0 = jnp.clip(jnp.floor(f).astype(jnp.int32), 0, _SDF_GRID - 2)
    w = f - i0
    x0, y0 = i0[..., 0], i0[..., 1]
    wx, wy = w[..., 0], w[..., 1]
    top = table[y0, x0] * (1 - wx) + table[y0, x0 + 1] * wx
    bottom = table[y0 + 1, x0] * (1 - wx) + table[y0 + 1, x0 + 1] * wx
    return top * (1 - wy) + bottom * wy + outside


def draw_one(scene: Scenes, size: int) -> jax.Array:
    """Draws one scene (no batch axis) to an [size, size, 3] float32 image in [0, 1]."""
    u = (jnp.arange(size, dtype=jnp.float32) + 0.5) / size * 2.0 - 1.0
    grid = jnp.stack(jnp.meshgrid(u, u, indexing="xy"), axis=-1)  # [S, S, (x, y)]
    h = scene.homography
    warped = grid @ h[:2, :2].T + h[:2, 2].reshape(1, 1, 2)
    p = warped / (grid @ h[2, :2] + h[2, 2])[..., None]
    pixel = 2.0 / size  # canvas units per output pixel

    direction = jnp.stack([jnp.cos(scene.gradient_angle), jnp.sin(scene.gradient_angle)])
    t = jnp.clip(p @ direction * 0.5 + 0.5, 0.0, 1.0)[..., None]
    first, second = scene.background[:, None, None, :]  # [1, 1, 3] each
    background = first * (1.0 - t) + second * t
    background = background + jax.image.resize(scene.noise, (size, size, 3), "linear")

    def coverage(shape, centre, radius, angle, squeeze):
        c, s = jnp.cos(angle), jnp.sin(angle)
        d = p - centre.reshape(1, 1, 2)
        # Rotate into the shape's frame, then undo its (x, y) scales.
        q = jnp.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)
        sx, sy = radius / jnp.sqrt(squeeze), radius * jnp.sqrt(squeeze)
        q = q / jnp.stack([sx, sy]).reshape(1, 1, 2)
        sdf_pixels = _shape_sdf(q, shape) * jnp.minimum(sx, sy) / pixel
        return jnp.clip(0.5 - sdf_pixels / scene.softness, 0.0, 1.0)

    alpha = (
        jax.vmap(coverage)(scene.shape, scene.centre, scene.radius, scene.angle, scene.squeeze)
        * scene.alpha[:, None, None]
    )  # [K, S, S]
    a = alpha[..., None]
    colour = scene.colour[:, None, None, :]

    def paint(image, layer):
        a_k, c_k = layer
        return image * (1.0 - a_k) + c_k * a_k, None

    over, _ = jax.lax.scan(paint, background, (a, colour))
    additive = background + jnp.sum(a * colour, axis=0)
    total = jnp.sum(a, axis=0)
    mean = jnp.sum(a * colour, axis=0) / (total + 1e-8)
    cover = jnp.clip(total, 0.0, 1.0)
    masked = mean * cover + background * (1.0 - cover)
    image = jnp.select([scene.composite == 0, scene.composite == 1], [over, additive], masked)
    return jnp.clip(image * scene.gain.reshape(1, 1, 3), 0.0, 1.0)


def draw(scenes: Scenes, size: int) -> jax.Array:
    """Draws a batch of scenes: [B, size, size, 3] float32 in [0, 1]. Jit-able (size static)."""
    return jax.vmap(lambda s: draw_one(s, size))(jax.tree.map(jnp.asarray, scenes))


def zero_shot_prompts() -> list[str]:
    """The C x S prompts "a {colour} {shape}", colour-major, used for zero-shot scoring."""
    return [f"{_article(c)} {c} {s}" for c in COLOUR_NAMES for s in SHAPES]


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
    text = np.asarray(embed_texts(zero_shot_prompts()), np.float32)
    logits = scale * np.asarray(image_embeds, np.float32) @ text.T
    logits = logits.reshape(len(logits), len(COLOUR_NAMES), len(SHAPES))
    colour_score = np.asarray(jax.nn.logsumexp(logits, axis=2))
    shape_score = np.asarray(jax.nn.logsumexp(logits, axis=1))
    return {
        "colour": float(np.mean(colour_score.argmax(1) == batch.labels.colour[:, 0])),
        "shape": float(np.mean(shape_score.argmax(1) == batch.labels.shape[:, 0])),
    }
