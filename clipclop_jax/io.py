"""Files on disk: reading any image as RGBA, and atomic writes of PNG, NPZ and bytes.

Every write goes to a temporary file in the destination folder and is renamed over the
target, so a crash or a kill at any instant leaves either the old file or the new one, never
half of one.
"""

from __future__ import annotations

import contextlib
import io as _io
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

# Pillow's own default (~89 Mpx, a 9500 x 9500 image); larger files are refused as possible
# decompression bombs rather than decoded into gigabytes.
MAX_IMAGE_PIXELS = 89_478_485


class ImageReadError(ValueError):
    """A file is not a readable image; the message names the file and the reason."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yields a temporary path beside ``path`` that replaces it on success."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    # mkstemp makes the file private (0600); give it the permissions open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    try:
        yield temporary
        with open(temporary, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        handle.write(data)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[H, W, C] float in [0, 1] (clipped) or uint8 -> uint8."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image
    return np.round(np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0).astype(np.uint8)


def save_png(
    path: str | os.PathLike, image: np.ndarray, *, text: Mapping[str, str] | None = None
) -> None:
    """Writes an RGB(A) image as PNG atomically, with optional text chunks.

    Args:
      path: destination file.
      image: [H, W, 3 or 4] float in [0, 1] or uint8.
      text: key -> value stored as PNG iTXt chunks (e.g. the run's config).
    """
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    with atomic_path(path) as temporary:
        Image.fromarray(to_uint8(image)).save(temporary, format="PNG", pnginfo=info)


def png_text(path: str | os.PathLike) -> dict[str, str]:
    """The text chunks of a PNG file."""
    with Image.open(path) as image:
        image.load()
        return dict(getattr(image, "text", {}))


def save_npz_atomic(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """``np.savez_compressed`` to ``path`` atomically."""
    buffer = _io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def read_rgba(
    path: str | os.PathLike, *, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[np.ndarray, bool]:
    """Reads any image file Pillow understands as straight RGBA.

    EXIF orientation is applied. Modes are normalised: 1, L, P, RGB, CMYK, YCbCr, LAB, HSV to
    RGB; LA, PA, RGBA, La, RGBa to RGBA; P or L with a transparency colour to RGBA; 16- and
    32-bit integer and float greyscale (I;16, I, F) become 8 bits (I;16 by its full range,
    I and F by the image's maximum).

    Args:
      path: the image file.
      max_pixels: larger images are refused (decompression-bomb guard).

    Returns:
      ``(rgba, has_alpha)``: [H, W, 4] uint8, and whether the file carried transparency
      (when False, alpha is 255 everywhere).

    Raises:
      ImageReadError: not an image, corrupt or truncated, or too large.
    """
    name = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(name) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageReadError(
                        f"{name}: {width}x{height} is larger than {max_pixels} pixels "
                        "(possible decompression bomb): downscale it first."
                    )
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_rgba(image)
    except ImageReadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(
            f"{name}: larger than {max_pixels} pixels (possible decompression bomb): "
            "downscale it first."
        ) from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image file Pillow can read.") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        raise ImageReadError(f"{name}: corrupt or truncated image ({reason}).") from None


def _to_rgba(image: Image.Image) -> tuple[np.ndarray, bool]:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, np.float64)
        # 16-bit files use their full range; 32-bit ones have none, so their maximum is white.
        top = 65535.0 if mode.startswith("I;16") else max(float(values.max(initial=0)), 1e-12)
        image = Image.fromarray(np.round(np.clip(values / top, 0, 1) * 255).astype(np.uint8))
        mode = "L"
    has_alpha = "A" in image.getbands() or "a" in image.getbands()
    has_alpha = has_alpha or (mode in ("P", "L", "RGB") and "transparency" in image.info)
    if mode == "P" and not has_alpha:
        image = image.convert("RGB")
    return np.asarray(image.convert("RGBA"), np.uint8).copy(), has_alpha
