"""Large collages made of tiles: each tile optimised with its own prompt, assembled as one.

Every tile is an ordinary collage on its own canvas (``cols x rows`` tiles of the config's
canvas), optimised with its own prompt; tiles of one size share one compiled program. They
are then assembled by *shared borders*: all tiles' patches are placed on one large canvas at
their tiles' offsets and rendered together, once. A patch near a tile's edge is drawn whole,
across the border, and composites with its neighbours' patches there (alpha-weighted in the
default mode), so no tile ends in a hard seam. docs/tiles.md states the geometry.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from clipclop_jax.collage.params import Collage, CollageParams
from clipclop_jax.config import CollageConfig


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """A ``cols x rows`` grid of tiles, each a canvas of ``tile`` config."""

    cols: int
    rows: int

    def __post_init__(self):
        for name in ("cols", "rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 1 <= value <= 64:
                raise ValueError(f"tiles {name}={value!r} is out of range: use 1..64.")

    @classmethod
    def parse(cls, spec: str) -> TileGrid:
        """'3x2' -> 3 columns, 2 rows."""
        parts = spec.lower().replace(" ", "").split("x")
        try:
            cols, rows = (int(p) for p in parts)
        except ValueError:
            raise ValueError(
                f"tiles {spec!r} is not COLSxROWS: write e.g. '3x2' (3 wide, 2 high)."
            ) from None
        return cls(cols, rows)

    @property
    def count(self) -> int:
        return self.cols * self.rows

    def positions(self) -> list[tuple[int, int]]:
        """(row, col) of each tile, row by row (the order of a prompt grid)."""
        return [(r, c) for r in range(self.rows) for c in range(self.cols)]


def assembled_config(tile: CollageConfig, grid: TileGrid) -> CollageConfig:
    """The config of the whole collage: every tile's patches on one large canvas.

    ``patch_max_proportion`` is scaled so that a patch keeps its size in pixels: a library
    square spans ``min(h, w) / p`` tile pixels, and the same on the large canvas.
    """
    height, width = tile.canvas_height * grid.rows, tile.canvas_width * grid.cols
    proportion = tile.patch_max_proportion * min(height, width) / min(tile.canvas_shape)
    return dataclasses.replace(
        tile,
        canvas_height=height,
        canvas_width=width,
        num_patches=tile.num_patches * grid.count,
        patch_max_proportion=proportion,
        min_trans=-1.0,
        max_trans=1.0,
    )


def assemble(collages: list[Collage], grid: TileGrid) -> Collage:
    """One collage of all tiles' patches (tiles row by row, as ``grid.positions``).

    A tile patch at ``t`` in its tile's [-1, 1] frame moves to
    ``((col + (t_x + 1) / 2) / cols) * 2 - 1`` (and the same for y with rows) on the large
    canvas; every other parameter is unchanged, since the patch size is kept by
    ``assembled_config``. Depth ``order`` is kept too, so opacity mode still layers patches
    within a tile; across tiles, equal depths compete as they would in one collage.
    """
    if len(collages) != grid.count:
        raise ValueError(f"{len(collages)} tile collages for a {grid.cols}x{grid.rows} grid.")
    moved = []
    for (row, col), collage in zip(grid.positions(), collages, strict=True):
        t = collage.params.translation
        x = ((col + (t[..., 0] + 1.0) / 2.0) / grid.cols) * 2.0 - 1.0
        y = ((row + (t[..., 1] + 1.0) / 2.0) / grid.rows) * 2.0 - 1.0
        params = collage.params._replace(translation=jnp.stack([x, y], -1))
        moved.append(Collage(params, collage.patch_index))
    params = CollageParams(
        *(jnp.concatenate(leaves) for leaves in zip(*(c.params for c in moved), strict=True))
    )
    return Collage(params, jnp.concatenate([c.patch_index for c in moved]))


def tile_background(background: np.ndarray, grid: TileGrid, row: int, col: int) -> np.ndarray:
    """The part of a whole-collage background ([rows*h, cols*w, 3]) under one tile."""
    height = background.shape[0] // grid.rows
    width = background.shape[1] // grid.cols
    return background[row * height : (row + 1) * height, col * width : (col + 1) * width]
