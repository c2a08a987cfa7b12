"""Checks that a run can start and finish, made before the CLIP model loads.

Loading CLIP takes 20-150 s, so whatever a user can get wrong in the settings is caught
first: ``check_run(config)`` parses the prompts, looks at the patch library source and the
background, and compares the memory the run will need (``estimate_memory``) with what the
machine has (``available_memory``). Each check raises a one-line ``ValueError`` naming the
problem and the fix. A new check is one more call in ``check_run``.

The memory figures are per-pixel costs measured on CPU (docs/runs.md, "Before the run
starts"); they are kept a little below what a run really takes, so a refusal means the run
could not have finished.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib

import jax

from clipclop_jax.collage.background import check_background
from clipclop_jax.collage.tiles import TileGrid
from clipclop_jax.guidance.prompts import PromptError, parse_grid, parse_prompts
from clipclop_jax.library.load import BUILTIN
from clipclop_jax.library.patch_library import LibraryError

# Bytes per canvas pixel of one collage whose gradient step is in flight: the render's
# accumulators, image, crops and their gradients. Measured on CPU as ~720 (peak RSS of a
# 1-step run, canvas 1024 and 2048 less canvas 64); rounded down, so as never to refuse a run
# that fits.
OPTIMISE_BYTES_PER_PIXEL = 600
# Bytes per output pixel of the final render: accumulators (up to 5 floats), background and
# image on the device, then the image as float32 and uint8 on the host (59 in all; measured
# ~63 on CPU at 4096 x 4096).
RENDER_DEVICE_BYTES_PER_PIXEL = 4 * (5 + 3 + 3)
RENDER_HOST_BYTES_PER_PIXEL = 4 * 3 + 3
# Extra bytes per output pixel of a Poisson ("poisson", "mixed") blend: layers, guidance
# field and the conjugate-gradient solver's vectors (measured ~217 at 4096 x 4096).
BLEND_BYTES_PER_PIXEL = 200
# Host bytes per assembled output pixel that a tiled run holds while it renders the
# assembly: the tiles' own final images (float32), kept until then.
TILE_IMAGES_BYTES_PER_PIXEL = 4 * 3


def check_run(config, *, library: bool = True) -> None:
    """Every check that needs no model, for a ``settings.GenerateConfig``.

    Args:
      config: the run's settings.
      library: check the patch library source too (False: the caller has the library
        loaded already).

    Raises:
      ValueError: the first problem found (``PromptError`` for prompts, ``LibraryError``
        for the patch library), one line naming it and the fix.
    """
    check_prompts(config.prompt, config.region_prompts)
    check_shared(config, library=library)


def check_shared(config, *, library: bool = True) -> None:
    """The checks of ``check_run`` that do not look at prompts (patch library, background,
    memory): what the prompts of a batch or the tiles of a tiled run have in common."""
    if library:
        check_patches(config.patches)
    check_background(config.background)
    check_memory(config)


def check_prompts(prompt: str | None, region_prompts: str | None = None) -> None:
    """Parses the prompts and every region cell, as the run will (``PromptError`` if not);
    ``prompt`` None checks the region cells only."""
    if prompt is not None:
        parse_prompts(prompt)
    if region_prompts is not None:
        for r, row in enumerate(parse_grid(region_prompts), start=1):
            for c, cell in enumerate(row, start=1):
                try:
                    parse_prompts(cell)
                except PromptError as error:
                    raise PromptError(f"region row {r}, column {c}: {error}") from None


def check_patches(source: str) -> None:
    """Checks that a patch library source names something ``load_library`` can read.

    A built-in name, a readable folder, or a readable ``.npz``/``.npy`` file; the contents
    are read when the library loads (still before the model).

    Raises:
      LibraryError: the source is missing, unreadable, or a file of another kind.
    """
    name = os.fspath(source)
    if name in BUILTIN:
        return
    path = pathlib.Path(name).expanduser()
    if not path.exists():
        raise LibraryError(
            f"patch library {name!r} does not exist: pass 'shapes', 'painted', 'photos', a "
            "folder of images, or a .npz/.npy library file."
        )
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise LibraryError(f"patch folder {name!r} cannot be read: check its permissions.")
        return
    if path.suffix.lower() not in (".npz", ".npy"):
        raise LibraryError(
            f"patch library {name!r} is a file but not a .npz or .npy library: pass the "
            "folder that holds the images, or a library file."
        )
    try:
        with open(path, "rb") as handle:
            start = handle.read(6)
    except OSError as error:
        raise LibraryError(f"patch library {name!r} cannot be read ({error}).") from None
    # A .npz is a zip archive, a .npy starts with numpy's magic string.
    magic = b"PK\x03\x04" if path.suffix.lower() == ".npz" else b"\x93NUMPY"
    if not start.startswith(magic):
        raise LibraryError(
            f"patch library {name!r} is not a {path.suffix.lower()} file: rebuild it with "
            "`clipclop patches build`."
        )


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Peak bytes a run needs, by stage (``estimate_memory``).

    Attributes:
      optimise: on the device, while the collages are optimised.
      render_device: on the device, while the final image is rendered (and blended).
      render_host: on the host, for the final image.
    """

    optimise: int
    render_device: int
    render_host: int


def estimate_memory(config, *, num_devices: int | None = None) -> MemoryEstimate:
    """About the least memory a run needs (a ``settings.GenerateConfig``).

    A tiled run (``config.tiles``) optimises and renders one tile at a time, then renders the
    assembled collage once (``cols x rows`` tiles at the output size, plainly: only each
    tile's own render blends); its render figures are the larger of the two.

    Args:
      config: the run's settings.
      num_devices: devices the population is split over (None: ``config.num_devices`` or
        every local device).
    """
    height, width = config.collage.canvas_shape
    devices = num_devices or config.num_devices or jax.local_device_count()
    batching = config.optim.batching
    if batching == "auto":
        batching = "per_collage" if jax.default_backend() == "cpu" else "population"
    in_flight = 1 if batching == "per_collage" else math.ceil(config.population / devices)
    optimise = in_flight * height * width * OPTIMISE_BYTES_PER_PIXEL
    out_height, out_width = config.output_shape()
    pixels = out_height * out_width
    render_device = pixels * RENDER_DEVICE_BYTES_PER_PIXEL
    if config.blend != "none":
        render_device += pixels * BLEND_BYTES_PER_PIXEL
    render_host = pixels * RENDER_HOST_BYTES_PER_PIXEL
    if config.tiles is not None:
        whole = pixels * TileGrid.parse(config.tiles).count
        render_device = max(render_device, whole * RENDER_DEVICE_BYTES_PER_PIXEL)
        host = RENDER_HOST_BYTES_PER_PIXEL + TILE_IMAGES_BYTES_PER_PIXEL
        render_host = max(render_host, whole * host)
    return MemoryEstimate(optimise, render_device, render_host)


def available_memory() -> tuple[int | None, int | None]:
    """(host, device) bytes free now; device is None where it shares the host's memory
    (CPU) or does not say, host is None where the system does not say."""
    host = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    host = int(line.split()[1]) * 1024
    except OSError:
        pass
    if host is None:
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            host = None
    device = None
    stats = jax.local_devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    if stats and "bytes_limit" in stats:
        device = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    return host, device


def check_memory(config) -> None:
    """Refuses a run whose canvas or output cannot fit in this machine's memory.

    Raises:
      ValueError: naming the stage, the estimate, what is free, and the option to lower.
    """
    need = estimate_memory(config)
    host, device = available_memory()
    shared = device is None  # the CPU backend computes in host memory
    stages = [
        ("optimising", need.optimise, device, "--size or --population"),
        ("the final render", need.render_device + shared * need.render_host, device, None),
    ]
    if not shared:
        stages.append(("the final render", need.render_host, host, None))
    for stage, bytes_needed, free_device, fix in stages:
        free = host if free_device is None else free_device
        where = "memory" if free_device is None else "device memory"
        if free is None or bytes_needed <= free:
            continue
        if fix is None:
            fix = "--output-size" + (" or --tiles" if config.tiles is not None else "")
            fix += " or --blend none" if config.blend != "none" else ""
        raise ValueError(
            f"{stage} needs about {_gib(bytes_needed)} of {where} but this machine has "
            f"{_gib(free)} free: lower {fix}."
        )


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"


__all__ = [
    "MemoryEstimate",
    "available_memory",
    "check_memory",
    "check_patches",
    "check_prompts",
    "check_run",
    "check_shared",
    "estimate_memory",
]
