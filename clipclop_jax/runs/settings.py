"""A run's settings: ``GenerateConfig`` (everything that decides the result) and
``OutputConfig`` (what the run folder gets besides the collage).

Both are frozen dataclasses, saved as ``config.json``; a new setting is a new field here (or
in the config of the stage it belongs to, nested under ``GenerateConfig``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from clipclop_jax.blend.seams import BLEND_MODES
from clipclop_jax.collage.tiles import TileGrid
from clipclop_jax.config import (
    CollageConfig,
    OptimConfig,
    _check_choice,
    _check_range,
    check_field_types,
    from_dict,
    to_dict,
)
from clipclop_jax.guidance.augment import AugmentConfig
from clipclop_jax.guidance.ensemble import parse_model_spec
from clipclop_jax.guidance.objective import (
    RegionConfig,
)
from clipclop_jax.guidance.prompts import format_prompts, parse_grid
from clipclop_jax.search.evolution import EvolutionConfig


@dataclasses.dataclass(frozen=True)
class OutputConfig:
    """What a run writes to its folder besides the collage (only with ``out_dir``).

    Files are written at the end of a compiled chunk: at the first chunk end at or after each
    multiple of ``checkpoint_every`` / ``frame_every`` steps, and at the end of the run.

    Attributes:
      checkpoint_every: steps between checkpoints (0: only at the end and when stopped).
        Each checkpoint also rewrites collage.png and params.npz with the best collage so far.
      keep_checkpoints: how many of the newest checkpoints to keep.
      gif, mp4: write evolution.gif / evolution.mp4 of the best collage as it evolves.
      frame_every: steps between frames of the GIF and MP4.
      fps: their frames per second.
    """

    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    gif: bool = False
    mp4: bool = False
    frame_every: int = 10
    fps: float = 10.0

    def __post_init__(self):
        check_field_types(self)
        _check_range("checkpoint_every", self.checkpoint_every, 0, 10_000_000)
        _check_range("keep_checkpoints", self.keep_checkpoints, 1, 1000)
        _check_range("frame_every", self.frame_every, 1, 10_000_000)
        _check_range("fps", self.fps, 0.1, 120.0)


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """Everything that decides a run's result; saved as ``config.json`` beside it.

    Attributes:
      prompt: weighted prompts, "a cat made of leaves:1 | blurry:-0.5".
      region_prompts: compositional prompts, a grid "sky | sun | sky / tree | field | chicken"
        (columns by '|', rows by '/'), each region scored on its own crop; a cell may carry
        a weight, "sun:2", multiplying the region's base weight (the original's 1/5).
      tiles: "COLSxROWS" for a tiled collage (``tiled.generate_tiled``; docs/tiles.md), or
        None for one canvas.
      tile_prompts: a grid of one prompt per tile (None: ``prompt`` for every tile).
      tile_template: e.g. "close-up of {}": every tile also gets 3 x 3 region prompts, this
        template filled with its tile's prompt.
      blend: "poisson" or "mixed" smooths the seams between patches of the final render in
        the gradient domain (``blend.seams.blend_collage``, docs/blending.md); "none" does not.
      background_use: with tiles, "global" stretches the background over the whole collage,
        "local" repeats it in every tile (the original's ``background_use``).
      model: "demo", a Hugging Face CLIP name, or a save_pretrained folder; or several,
        separated by commas, each with an optional ":weight" ("demo,PATH:0.5"): an ensemble
        whose losses add up by weight (normalised to sum to 1), each model scoring the same
        crops at its own input size (``guidance.ensemble``; docs/parameters.md).
      patches: "shapes", "photos", a folder of images, or a library .npz/.npy.
      population: collages optimised in parallel.
      seed: the run's PRNG seed.
      output_size: longest side of the final render in pixels (default: the canvas times
        ``high_res_multiplier``).
      high_res_multiplier: the original's 4.
      background: "black", "#rrggbb", "r,g,b", "noise", or an image path.
      num_devices: devices the population is split over (None: as many as divide it).
      max_library_patches: use only this many library patches (a seeded random choice), to
        keep a large library's footprint small (None: all).
      lowres_size, highres_size: library square sides for optimising and for the final render.
      collage, optim, augment, evolution, regions, output: see their classes (the regions'
        rows and columns follow ``region_prompts``); a dict of settings is converted with
        ``from_dict``.

    Every field's type is checked (``config.check_field_types``): a wrong one is a one-line
    ``ConfigTypeError`` (a ``TypeError`` and a ``ValueError``) naming field, value and type.
    """

    prompt: str = "a red circle"
    region_prompts: str | None = None
    tiles: str | None = None
    tile_prompts: str | None = None
    tile_template: str | None = None
    background_use: str = "global"
    blend: str = "none"
    model: str = "demo"
    patches: str = "shapes"
    population: int = 2
    seed: int = 0
    output_size: int | None = None
    high_res_multiplier: int = 4
    background: str = "black"
    num_devices: int | None = None
    max_library_patches: int | None = None
    lowres_size: int = 64
    highres_size: int = 256
    collage: CollageConfig = dataclasses.field(default_factory=CollageConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    evolution: EvolutionConfig = dataclasses.field(default_factory=EvolutionConfig)
    regions: RegionConfig = dataclasses.field(default_factory=RegionConfig)
    output: OutputConfig = dataclasses.field(default_factory=OutputConfig)

    def __post_init__(self):
        check_field_types(self)
        if not self.prompt.strip():
            raise ValueError("prompt is empty: give the text the collage should show.")
        parse_model_spec(self.model)
        _check_range("population", self.population, 1, 100_000)
        _check_range("seed", self.seed, 0, 2**32 - 1)
        _check_range("high_res_multiplier", self.high_res_multiplier, 1, 64)
        if self.output_size is not None:
            _check_range("output_size", self.output_size, 8, 32768)
        _check_range("lowres_size", self.lowres_size, 8, 1024)
        _check_range("highres_size", self.highres_size, 8, 8192)
        if self.num_devices is not None:
            _check_range("num_devices", self.num_devices, 1, 65536)
        if self.max_library_patches is not None:
            _check_range("max_library_patches", self.max_library_patches, 1, 10_000_000)
        if self.tiles is not None:
            grid = TileGrid.parse(self.tiles)
            if self.tile_prompts is not None:
                parse_grid(self.tile_prompts, rows=grid.rows, cols=grid.cols)
        elif self.tile_prompts is not None or self.tile_template is not None:
            raise ValueError("tile_prompts/tile_template need tiles: set tiles, e.g. '3x2'.")
        if self.tile_template is not None:
            format_prompts(self.tile_template, "x")
        _check_choice("background_use", self.background_use, ("global", "local"))
        _check_choice("blend", self.blend, BLEND_MODES)
        rows, cols = 0, 0
        if self.region_prompts is not None:
            grid = parse_grid(self.region_prompts)
            rows, cols = len(grid), len(grid[0])
        if (self.regions.rows, self.regions.cols) != (rows, cols):
            # Derived from the prompts, so a config file need not repeat the grid's size.
            regions = dataclasses.replace(self.regions, rows=rows, cols=cols)
            object.__setattr__(self, "regions", regions)

    def output_shape(self) -> tuple[int, int]:
        height, width = self.collage.canvas_shape
        if self.output_size is None:
            return height * self.high_res_multiplier, width * self.high_res_multiplier
        ratio = self.output_size / max(height, width)
        return max(1, round(height * ratio)), max(1, round(width * ratio))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GenerateConfig:
        values = _as_written(values)
        nested = {
            "collage": CollageConfig,
            "optim": OptimConfig,
            "augment": AugmentConfig,
            "evolution": EvolutionConfig,
            "regions": RegionConfig,
            "output": OutputConfig,
        }
        for key, sub in nested.items():
            if isinstance(values.get(key), dict):
                values[key] = from_dict(sub, values[key])
        return from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


# AugmentConfig fields added after runs were already saved, with the value every run saved
# before them had: a saved config (all its section's other fields present) that lacks one
# was written then, and keeps that value, so resuming or re-running it gives the same
# collage. A hand-written file that leaves fields out gets today's defaults.
_ADDED_LATER = {"augment": (AugmentConfig, {"noise": 0.0})}


def _as_written(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with each field added since a saved config was written set as it was then."""
    values = dict(values)
    for section, (cls, added) in _ADDED_LATER.items():
        saved = values.get(section)
        names = {field.name for field in dataclasses.fields(cls)}
        if isinstance(saved, dict) and set(saved) == names - set(added):
            values[section] = {**saved, **added}
    return values
