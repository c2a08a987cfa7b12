"""``generate_tiled()``: a large collage of ``cols x rows`` tiles, each with its own prompt.

Each tile is an ordinary ``generate.generate`` run in ``OUT/tiles/rRcC`` (so it checkpoints and
resumes like any run); tiles share one compiled program because they have the same shapes.
The tiles' winning collages are then assembled on one large canvas (``tiles.assemble``:
shared borders, docs/tiles.md) and rendered once at the output size.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import jax
import numpy as np

from clipclop_jax.collage.background import make_background
from clipclop_jax.collage.hires import render_high_res
from clipclop_jax.collage.tiles import TileGrid, assemble, assembled_config, tile_background
from clipclop_jax.guidance.prompts import format_prompts, parse_grid
from clipclop_jax.runs import preflight, video
from clipclop_jax.runs.chunks import ProgressFn
from clipclop_jax.runs.generate import generate
from clipclop_jax.runs.outputs import GenerateResult, estimate_output_bytes, write_outputs
from clipclop_jax.runs.resources import Resources, load_resources, with_absolute_paths
from clipclop_jax.runs.run_folder import TILE_DIR, prepare_output_folder, removed_if_left_empty
from clipclop_jax.runs.settings import GenerateConfig
from clipclop_jax.runs.setup import run_keys

# The original's compositional tiles: 3 x 3 regions, each the template filled with the tile's
# prompt.
TEMPLATE_GRID = 3


def tile_configs(config: GenerateConfig) -> list[GenerateConfig]:
    """The config of every tile, row by row: its prompt, seed ``seed + i`` and regions."""
    grid = TileGrid.parse(config.tiles)
    if config.tile_prompts is None:
        prompts = [config.prompt] * grid.count
    else:
        prompts = [
            p
            for row in parse_grid(config.tile_prompts, rows=grid.rows, cols=grid.cols)
            for p in row
        ]
    configs = []
    for i, prompt in enumerate(prompts):
        regions = config.region_prompts
        if config.tile_template is not None:
            cell = format_prompts(config.tile_template, prompt)
            row = " | ".join([cell] * TEMPLATE_GRID)
            regions = " / ".join([row] * TEMPLATE_GRID)
        configs.append(
            dataclasses.replace(
                config,
                prompt=prompt,
                seed=(config.seed + i) % 2**32,
                region_prompts=regions,
                tiles=None,
                tile_prompts=None,
                tile_template=None,
            )
        )
    return configs


def generate_tiled(
    config: GenerateConfig,
    *,
    out_dir: str | os.PathLike | None = None,
    progress_fn: ProgressFn | None = None,
    resources: Resources | None = None,
    overwrite: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> GenerateResult:
    """Makes a tiled collage (``config.tiles``, e.g. "3x2"; see ``GenerateConfig``).

    Args:
      config: the run's settings; ``tiles`` must be set.
      out_dir: if given, ``collage.png`` (the assembled collage, config in its text chunks),
        ``params.npz`` (the assembled collage's parameters), ``config.json``, and one run
        folder per tile under ``tiles/``.
      progress_fn: ``progress_fn(step, metrics)`` with ``step`` counted over all tiles.
      resources, overwrite, should_stop: as for ``generate.generate``.

    Returns:
      The assembled collage: its image at ``cols x rows`` times the tile output size, its
      parameters, the mean of the tiles' losses and the tiles' histories side by side.
    """
    if config.tiles is None:
        raise ValueError("config.tiles is not set: use generate for one canvas.")
    grid = TileGrid.parse(config.tiles)
    config = with_absolute_paths(config)
    configs = tile_configs(config)
    # Before the folder and the model: every tile's prompts, then what the tiles share
    # (memory for a tile and for the assembled collage).
    for tile in configs:
        preflight.check_prompts(tile.prompt, tile.region_prompts)
    preflight.check_shared(config)
    out_dir = None if out_dir is None else os.fspath(out_dir)
    # A failure leaves nothing empty behind: the tiles' folder (a failed tile removes its
    # own), and the run's folder if this call made it.
    with removed_if_left_empty(out_dir, subfolders=(TILE_DIR,)):
        if out_dir is not None:
            video.check_video_support(gif=config.output.gif, mp4=config.output.mp4)
            # Every tile's folder, and the assembled collage.png (counted as
            # estimate_output_bytes counts an image: 3 bytes a pixel, twice).
            tile_h, tile_w = config.output_shape()
            assembled = 2 * 3 * tile_h * tile_w * grid.count
            needed = grid.count * estimate_output_bytes(configs[0]) + assembled
            prepare_output_folder(out_dir, overwrite=overwrite, needed_bytes=needed)
        return _make_tiled(
            config, grid, configs, out_dir, progress_fn, resources, overwrite, should_stop
        )


def _make_tiled(
    config: GenerateConfig,
    grid: TileGrid,
    configs: list[GenerateConfig],
    out_dir: str | None,
    progress_fn: ProgressFn | None,
    resources: Resources | None,
    overwrite: bool,
    should_stop: Callable[[], bool] | None,
) -> GenerateResult:
    """``generate_tiled`` once its checks passed: loads, runs the tiles, assembles."""
    resources = resources or load_resources(config)
    height, width = config.collage.canvas_shape
    whole = None
    if config.background_use == "global":
        key = jax.random.key(config.seed)
        whole = np.asarray(
            make_background(config.background, height * grid.rows, width * grid.cols, key=key)
        )
    results = []
    steps = config.optim.steps
    for i, ((row, col), tile) in enumerate(zip(grid.positions(), configs, strict=True)):
        tile_progress = None
        if progress_fn is not None:

            def tile_progress(step, metrics, done=i * steps):
                progress_fn(done + step, metrics)

        results.append(
            generate(
                tile,
                out_dir=None
                if out_dir is None
                else os.path.join(out_dir, TILE_DIR, f"r{row}c{col}"),
                progress_fn=tile_progress,
                resources=resources,
                overwrite=overwrite,
                should_stop=should_stop,
                canvas_background=None if whole is None else tile_background(whole, grid, row, col),
            )
        )
    collage = assemble([r.collage for r in results], grid)
    big = assembled_config(config.collage, grid)
    tile_h, tile_w = config.output_shape()
    out_h, out_w = tile_h * grid.rows, tile_w * grid.cols
    # The backgrounds the tiles were optimised over, enlarged: a noise field stays the same.
    if config.background_use == "global":
        whole_shape = (height * grid.rows, width * grid.cols)
        background = make_background(
            config.background,
            out_h,
            out_w,
            key=jax.random.key(config.seed),
            field_shape=whole_shape,
        )
    else:
        rows = [
            [
                np.asarray(
                    make_background(
                        config.background,
                        tile_h,
                        tile_w,
                        key=run_keys(tile.seed)[0],
                        field_shape=(height, width),
                    )
                )
                for tile in configs[r * grid.cols : (r + 1) * grid.cols]
            ]
            for r in range(grid.rows)
        ]
        background = np.concatenate([np.concatenate(row, axis=1) for row in rows], axis=0)
    image = render_high_res(collage, resources.library.high, background, big, out_h, out_w)
    loss = float(np.mean([r.loss for r in results]))
    history = np.concatenate([r.history for r in results], axis=1)
    result = GenerateResult(image, collage, loss, history, out_dir)
    if out_dir is not None:
        write_outputs(out_dir, config, result, resources.library)
    return result
