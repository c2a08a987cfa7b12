"""Which cut-outs a built library keeps: filters, near-duplicates and selection.

``Curator`` drops a cut-out that is too small, too large, too elongated or too sparse (and
may ``normalised_brightness`` it); ``SlotStore`` keeps the squares that pass in a scratch file,
dropping near-duplicates by their ``thumbnail`` and selecting "random" (reservoir sampling) or
"diverse" (``farthest_points``) ones when there is a cap. ``maker.build_library`` drives both.

A new selection is a name in ``SELECTIONS`` and a branch in ``SlotStore.offer``/``finish``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from clipclop_jax.library.cutouts import ALPHA_EMPTY

SELECTIONS = ("random", "diverse")
# Thumbnail side for near-duplicate and diversity distances: 6 x 6 x RGBA = 144 numbers.
THUMBNAIL = 6


@dataclasses.dataclass(frozen=True)
class Curator:
    min_width: int
    min_height: int
    max_size: int | None
    max_aspect: float | None
    min_coverage: float
    normalise_brightness: bool

    def __call__(self, cutout: np.ndarray, scale: float) -> tuple[np.ndarray, str | None]:
        """(cut-out, None) if it is kept (possibly brightness-normalised), else the reason."""
        height, width = cutout.shape[0] * scale, cutout.shape[1] * scale
        if height < self.min_height or width < self.min_width:
            return cutout, "too small"
        if self.max_size is not None and max(height, width) > self.max_size:
            return cutout, "too large"
        if self.max_aspect is not None and max(height, width) > self.max_aspect * min(
            height, width
        ):
            return cutout, "too elongated"
        if cutout[..., 3].mean() / 255.0 < self.min_coverage:
            return cutout, "too sparse"
        if self.normalise_brightness:
            cutout = normalised_brightness(cutout)
        return cutout, None


def _score(score: float | None) -> float:
    return float("nan") if score is None else float(score)


def normalised_brightness(cutout: np.ndarray) -> np.ndarray:
    """Scales colours so the brightest visible channel value becomes 255."""
    visible = cutout[..., 3] > ALPHA_EMPTY
    top = int(cutout[..., :3][visible].max(initial=0))
    if top in (0, 255):
        return cutout
    out = cutout.copy()
    out[..., :3] = np.round(cutout[..., :3] * (255.0 / top)).clip(0, 255).astype(np.uint8)
    return out


def thumbnail(square: np.ndarray) -> np.ndarray:
    """[THUMBNAIL**2 * 4] float32 in [0, 1]: the square's premultiplied RGBA, box-averaged."""
    image = Image.fromarray(np.asarray(square, np.uint8), "RGBA").convert("RGBa")
    small = image.resize((THUMBNAIL, THUMBNAIL), Image.Resampling.BOX)
    return np.asarray(small, np.float32).reshape(-1) / 255.0


def farthest_points(points: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Greedy farthest-point selection: ``count`` row indices of ``points`` [N, D], spread out.

    Starts from a random row, then repeatedly takes the row farthest from all taken ones.
    """
    count = min(count, len(points))
    chosen = np.empty(count, np.int64)
    chosen[0] = rng.integers(len(points))
    distance = np.sum((points - points[chosen[0]]) ** 2, axis=1)
    distance[chosen[0]] = -1.0
    for k in range(1, count):
        chosen[k] = np.argmax(distance)
        distance = np.minimum(distance, np.sum((points - points[chosen[k]]) ** 2, axis=1))
        distance[chosen[: k + 1]] = -1.0
    return chosen


class SlotStore:
    """The squares kept so far, in a scratch file of fixed-size slots, with their records.

    ``offer`` applies near-duplicate removal and selection as squares stream in:
    * no ``capacity``: every square is kept;
    * "random": reservoir sampling (Vitter's algorithm R) into ``capacity`` slots, so the
      kept set is a uniform sample of all candidates;
    * "diverse": up to ``2 * capacity`` are kept; when full, farthest-point selection on
      the thumbnails keeps the ``capacity`` most spread out and frees the rest.
    Memory holds one thumbnail (576 bytes) and one record per slot; squares stay on disk.
    """

    def __init__(self, path, side, *, capacity, selection, dedupe_threshold, rng):
        self.side = side
        self._file = open(path, "w+b")  # noqa: SIM115 (closed by close())
        self._bytes = side * side * 4
        self._capacity = capacity
        self._limit = capacity if selection == "random" or capacity is None else 2 * capacity
        self._selection = selection
        self._threshold = dedupe_threshold
        self._rng = rng
        self._thumbs = np.zeros((0, THUMBNAIL * THUMBNAIL * 4), np.float32)
        # (arrival, name, (height, width), (source, label, score)) per slot; None: free.
        self._records: list[tuple | None] = []
        self._free: list[int] = []
        self._accepted = 0
        self._dropped = 0

    @property
    def count(self) -> int:
        return len(self._records) - len(self._free)

    def offer(
        self,
        square: np.ndarray,
        size,
        name: str,
        *,
        source: str | None = None,
        label: str | None = None,
        score: float | None = None,
    ) -> str | None:
        """Keeps ``square`` (maybe evicting another), or returns why it is not kept.

        ``source`` (the image it was cut from; default ``name``), ``label`` and ``score``
        (a segmentation model's) are kept with it for the library's records.
        """
        thumb = thumbnail(square)
        if self._threshold > 0 and self.count:
            used = len(self._records)
            rms = np.sqrt(np.mean((self._thumbs[:used] - thumb) ** 2, axis=1))
            rms[self._free] = np.inf
            if rms.min() < self._threshold:
                return "duplicate"
        self._accepted += 1
        if self._limit is not None and self.count >= self._limit:
            if self._selection == "random":
                slot = int(self._rng.integers(self._accepted))
                if slot >= self._capacity:
                    return "not selected"
                self._dropped += 1
            else:
                self._compact(self._capacity)
                slot = self._free.pop()
        elif self._free:
            slot = self._free.pop()
        else:
            slot = len(self._records)
            self._records.append(None)
            if slot >= len(self._thumbs):
                grown = np.zeros(
                    (max(64, 2 * len(self._thumbs)), self._thumbs.shape[1]), np.float32
                )
                grown[: len(self._thumbs)] = self._thumbs
                self._thumbs = grown
        self._thumbs[slot] = thumb
        extra = (name if source is None else source, label or "", _score(score))
        self._records[slot] = (self._accepted, name, (int(size[0]), int(size[1])), extra)
        self._file.seek(slot * self._bytes)
        self._file.write(np.ascontiguousarray(square, np.uint8).tobytes())
        return None

    def _compact(self, keep: int) -> None:
        slots = np.asarray([s for s, r in enumerate(self._records) if r is not None])
        chosen = set(slots[farthest_points(self._thumbs[slots], keep, self._rng)].tolist())
        for slot in slots.tolist():
            if slot not in chosen:
                self._records[slot] = None
                self._free.append(slot)
                self._dropped += 1

    def finish(self) -> dict[str, int]:
        """Applies the final selection; returns reason -> squares dropped by selection."""
        if self._capacity is not None and self.count > self._capacity:
            self._compact(self._capacity)
        return {"not selected": self._dropped} if self._dropped else {}

    def order(self) -> list[int]:
        """The kept slots, in the order their squares arrived."""
        kept = [(r[0], s) for s, r in enumerate(self._records) if r is not None]
        return [slot for _, slot in sorted(kept)]

    def square(self, slot: int) -> np.ndarray:
        self._file.seek(slot * self._bytes)
        data = self._file.read(self._bytes)
        return np.frombuffer(data, np.uint8).reshape(self.side, self.side, 4)

    def name(self, slot: int) -> str:
        return self._records[slot][1]

    def size(self, slot: int) -> tuple[int, int]:
        return self._records[slot][2]

    def record(self, slot: int) -> tuple[str, str, float]:
        """(source, label or "", score or NaN) of a kept square."""
        return self._records[slot][3]

    def close(self) -> None:
        self._file.close()
