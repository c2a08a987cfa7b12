"""Tiled collages: the assembly geometry and what happens at tile borders."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipclop_jax.collage.params import random_collage
from clipclop_jax.collage.render import render
from clipclop_jax.collage.tiles import TileGrid, assemble, assembled_config
from clipclop_jax.config import CollageConfig
from clipclop_jax.library.patch_library import PatchLibrary

TILE = CollageConfig(
    canvas_height=24, canvas_width=32, num_patches=5, patch_max_proportion=8.0, min_scale=1.5
)


@pytest.fixture(scope="module")
def library():
    rng = np.random.default_rng(0)
    rgba = rng.uniform(0.2, 1.0, size=(6, 12, 12, 4)).astype(np.float32)
    rgba[:, [0, -1]] = 0
    rgba[:, :, [0, -1]] = 0
    return PatchLibrary(jnp.asarray(rgba), jnp.full((6, 2), 10, jnp.int32))


def test_grid_parsing_and_errors():
    assert TileGrid.parse("3x2") == TileGrid(3, 2)
    assert TileGrid.parse(" 1 X 4 ").positions() == [(0, 0), (1, 0), (2, 0), (3, 0)]
    for bad in ("3", "ax2", "0x2", "3x2x1"):
        with pytest.raises(ValueError) as error:
            TileGrid.parse(bad)
        assert "\n" not in str(error.value)


def test_each_tile_of_the_assembly_is_its_own_render_when_no_patch_crosses_a_border(library):
    grid = TileGrid(3, 2)
    # Centres kept well inside each tile and small patches: nothing reaches a border.
    inner = dataclasses.replace(TILE, min_trans_init=-0.4, max_trans_init=0.4)
    tiles = [random_collage(jax.random.key(i), inner, 6) for i in range(grid.count)]
    big = assembled_config(TILE, grid)
    background = jnp.zeros((*big.canvas_shape, 3), jnp.float32)

    whole = np.asarray(render(assemble(tiles, grid), library, background, big))

    assert whole.shape == (48, 96, 3)
    for (row, col), tile in zip(grid.positions(), tiles, strict=True):
        alone = np.asarray(render(tile, library, jnp.zeros((24, 32, 3)), TILE))
        part = whole[row * 24 : (row + 1) * 24, col * 32 : (col + 1) * 32]
        np.testing.assert_allclose(part, alone, atol=1e-4)  # float32 re-centring


def test_a_patch_on_a_border_is_drawn_whole_across_it(library):
    grid = TileGrid(2, 1)
    config = dataclasses.replace(TILE, num_patches=1, render_mode="transparency")
    tile = random_collage(jax.random.key(3), config, 6)
    # The left tile's patch sits on its right edge; the right tile's patch is off-canvas.
    on_edge = tile._replace(
        params=tile.params._replace(translation=jnp.array([[1.0, 0.0]], jnp.float32))
    )
    away = tile._replace(
        params=tile.params._replace(translation=jnp.array([[5.0, 5.0]], jnp.float32))
    )
    big = assembled_config(config, grid)
    image = np.asarray(
        render(assemble([on_edge, away], grid), library, jnp.zeros((24, 64, 3)), big)
    )
    left, right = image[:, :32].sum(), image[:, 32:].sum()
    # Centred on the border: about half of the patch on each side, none of it cut off.
    assert left > 0 and right > 0
    assert abs(left - right) / (left + right) < 0.35
