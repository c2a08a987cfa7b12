"""Draws scenes of antialiased shapes, on device: the images of the demo CLIP's data.

A ``Scenes`` batch says what to draw: up to ``MAX_OBJECTS`` shapes (index into ``SHAPES``),
each with a colour, centre, radius, rotation, squeeze and opacity, over a gradient and
textured background, seen through a homography, composited by one of ``COMPOSITES`` ("over",
additive "transparency" or alpha-weighted "masked_transparency", as the collage renderer).
``draw`` (jit-able; ``draw_one`` vmapped) turns it into images in [0, 1].

Each shape is a signed distance field in a unit shape space: circles and rings analytic, the
rest polygons (``POLYGONS``). The fields are tabulated once at import and looked up
bilinearly, which keeps drawing far cheaper than a training step.

A new shape is a name in ``SHAPES`` and its outline in ``_polygons`` (or a case in
``_exact_shape_sdf``).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "bar", "ring", "cross")

MAX_OBJECTS = 8  # shapes per image (padded with invisible ones)
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
