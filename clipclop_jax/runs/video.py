"""Progress pictures: frames of the best collage as PNGs, assembled into a GIF and an MP4.

Frames go to disk as they are made (``frames/step-000000040.png``), so an interrupted run
keeps them and a resumed one adds to them; the GIF and MP4 are assembled from the frame files
when the run ends. GIFs use imageio's Pillow plugin; MP4s use imageio's ffmpeg plugin with the
ffmpeg binary that the ``imageio-ffmpeg`` wheel ships (no system ffmpeg needed). Both are in
the ``video`` extra: ``pip install 'clipclop-jax[video]'``.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np

from clipclop_jax import io

_NAME = re.compile(r"^step-(\d+)\.png$")
INSTALL = "pip install 'clipclop-jax[video]'"


def check_video_support(*, gif: bool, mp4: bool) -> None:
    """Raises a one-line ValueError now, before a run, if the GIF or MP4 writer is missing."""
    if not (gif or mp4):
        return
    try:
        import imageio  # noqa: F401
    except ImportError:
        raise ValueError(f"GIF and MP4 output need imageio: {INSTALL}.") from None
    if mp4:
        try:
            import imageio_ffmpeg

            imageio_ffmpeg.get_ffmpeg_exe()
        except (ImportError, RuntimeError) as error:
            raise ValueError(f"MP4 output needs imageio-ffmpeg ({error}): {INSTALL}.") from None


def save_frame(folder: str | os.PathLike, step: int, image: np.ndarray) -> str:
    """Writes one frame ([H, W, 3] float in [0, 1] or uint8) as ``step-<step>.png``."""
    path = os.path.join(os.fspath(folder), f"step-{step:09d}.png")
    io.save_png(path, image)
    return path


def list_frames(folder: str | os.PathLike) -> list[str]:
    """The frame files in ``folder``, in step order."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = sorted((int(m.group(1)), n) for n in names if (m := _NAME.match(n)))
    return [os.path.join(os.fspath(folder), n) for _, n in found]


def write_gif(path: str | os.PathLike, frames: Sequence[str], *, fps: float = 10.0) -> None:
    """Assembles frame files into a looping GIF, atomically.

    Raises:
      ValueError: no frames.
    """
    import imageio.v3 as iio

    if not frames:
        raise ValueError(f"{path}: no frames to write.")
    images = [_rgb(iio.imread(f)) for f in frames]
    data = iio.imwrite(
        "<bytes>", images, extension=".gif", duration=1000.0 / fps, loop=0, plugin="pillow"
    )
    io.atomic_write_bytes(path, data)


def write_mp4(path: str | os.PathLike, frames: Sequence[str], *, fps: float = 10.0) -> None:
    """Assembles frame files into an H.264 MP4 (yuv420p, plays everywhere), atomically.

    Odd sides are padded by one edge pixel, as yuv420p needs even ones.

    Raises:
      ValueError: no frames.
    """
    import imageio.v2 as imageio
    import imageio.v3 as iio

    if not frames:
        raise ValueError(f"{path}: no frames to write.")
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    # ffmpeg picks the container from the extension, so the temporary name keeps it.
    temporary = os.path.join(folder, f".tmp-{os.getpid()}-{name}")
    try:
        with warnings.catch_warnings():
            # imageio-ffmpeg starts ffmpeg with subprocess (fork and exec at once), which
            # JAX's warning about forking a multithreaded process does not concern.
            warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")
            writer = imageio.get_writer(
                temporary,
                format="FFMPEG",
                mode="I",
                fps=fps,
                codec="libx264",
                pixelformat="yuv420p",
                macro_block_size=1,
                ffmpeg_log_level="error",
            )
            with writer:
                for frame in frames:
                    writer.append_data(_even(_rgb(iio.imread(frame))))
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def _even(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    return np.pad(image, pad, mode="edge") if height % 2 or width % 2 else image
