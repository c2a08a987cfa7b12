"""A run's folder before a run writes there: its file names, and the checks that make it ready.

``prepare_output_folder`` makes a folder ready for a new run (refusing one that holds files
unless ``overwrite``, which then removes only what a run wrote there: ``remove_run_files``);
``check_output_folder`` checks that a folder can be written and that its disk has room, and
``state_nbytes`` sizes a run state for that estimate. The file-name constants here
(``CONFIG_FILE``, ``PARAMS_FILE``, ``CHECKPOINT_DIR``, ...) are the folder's layout
(docs/runs.md): a new file a run writes gets its name here and a pattern in ``_RUN_FILES`` or
``_STEP_FILES``, so that ``--overwrite`` removes it. Checkpoints themselves are in
``checkpoint``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from clipclop_jax.blend.seams import BLEND_MODES

# The run folder's layout (docs/runs.md).
CONFIG_FILE = "config.json"
COLLAGE_FILE = "collage.png"
PARAMS_FILE = "params.npz"
CHECKPOINT_DIR = "checkpoints"
DELETED_DIR = ".deleted"  # in checkpoints/: old steps on their way out (checkpoint.py)
FRAME_DIR = "frames"
GIF_FILE = "evolution.gif"
MP4_FILE = "evolution.mp4"
EDITS_FILE = "edits.jsonl"  # a studio session's edit log (clipclop_jax.studio)
TILE_DIR = "tiles"  # a tiled run's folder holds one run folder per tile, tiles/rRcC

# The names a run writes, by folder (docs/runs.md); --overwrite removes these and nothing
# else. ``collage-MODE.png`` is what ``reblend.blend_run`` adds.
_BLENDS = "|".join(m for m in BLEND_MODES if m != "none")
_RUN_FILES = (
    rf"config\.json|edits\.jsonl|collage(?:-(?:{_BLENDS}))?\.png|params\.npz|evolution\.(?:gif|mp4)"
)
# Any step-N file there is ours: list_checkpoints and video.list_frames read them all.
_STEP_FILES = {CHECKPOINT_DIR: r"step-\d+\.npz", FRAME_DIR: r"step-\d+\.png"}
_TILE_FOLDER = re.compile(r"r\d+c\d+")


def _own(pattern: str) -> re.Pattern:
    # A file of ours, or a write of one that never finished (io.atomic_path names it
    # ".tmp-XXXXXXXX<name>"; video and the writability probe use ".tmp-<pid>-<name>" and
    # ".tmp-probe-XXXXXXXX").
    return re.compile(rf"(?:\.tmp-[^/]*?)?(?:{pattern})|\.tmp-probe-\w+")


class OutputFolderError(ValueError):
    """A run's folder cannot be used; the message says why and what to do."""


def prepare_output_folder(
    out_dir: str | os.PathLike, *, overwrite: bool = False, needed_bytes: int = 0
) -> None:
    """Makes ``out_dir`` ready for a new run, or refuses before any work is done.

    An existing folder that is not empty is refused unless ``overwrite``, which then removes
    the files a previous run wrote there (``remove_run_files``) and nothing else.

    Raises:
      OutputFolderError: the folder exists and holds files, is not writable, or its disk has
        less than ``needed_bytes`` free.
    """
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise OutputFolderError(f"{out_dir} exists and is a file: choose a folder for the run.")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not overwrite:
            raise OutputFolderError(
                f"{out_dir} already exists and is not empty: choose another output folder, "
                "overwrite it (--overwrite, overwrite=True), or continue its run (clipclop "
                "resume)."
            )
        remove_run_files(out_dir)
    check_output_folder(out_dir, needed_bytes=needed_bytes)


def remove_run_files(out_dir: str | os.PathLike) -> None:
    """Removes the files a run (plain or tiled) wrote in ``out_dir``, matched by exact name,
    and then its sub-folders that are left empty. Any other file stays, wherever it is."""
    out_dir = os.fspath(out_dir)
    _remove_matching(out_dir, _own(_RUN_FILES))
    for folder, pattern in _STEP_FILES.items():
        path = os.path.join(out_dir, folder)
        if os.path.isdir(path):
            _remove_matching(path, _own(pattern))
            if folder == CHECKPOINT_DIR:
                _remove_checkpoint_folders(path)
            _remove_if_empty(path)
    tiles = os.path.join(out_dir, TILE_DIR)
    if os.path.isdir(tiles):
        for name in os.listdir(tiles):
            path = os.path.join(tiles, name)
            if _TILE_FOLDER.fullmatch(name) and os.path.isdir(path):
                remove_run_files(path)
                _remove_if_empty(path)
        _remove_if_empty(tiles)


def _remove_matching(folder: str, pattern: re.Pattern) -> None:
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        # A link is removed, never what it points to; a folder with our name is not ours.
        if pattern.fullmatch(name) and (os.path.islink(path) or not os.path.isdir(path)):
            os.remove(path)


# An orbax step folder (checkpoint.py), finished or left half-written by a kill, or one that
# a studio edit was rewriting: ours if it holds nothing but what orbax writes.
_CHECKPOINT_FOLDER = re.compile(r"step_\d+(?:\.orbax-checkpoint-tmp.*|\.clipclop-(?:new|old))?")
_CHECKPOINT_CONTENT = re.compile(
    r"state|meta|_CHECKPOINT_METADATA|commit_success\.txt|.*\.orbax-checkpoint-tmp.*"
)


def _remove_checkpoint_folders(folder: str) -> None:
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        if (
            _CHECKPOINT_FOLDER.fullmatch(name)
            and os.path.isdir(path)
            and not os.path.islink(path)
            and all(_CHECKPOINT_CONTENT.fullmatch(n) for n in os.listdir(path))
        ):
            shutil.rmtree(path)
    deleted = os.path.join(folder, DELETED_DIR)
    if os.path.isdir(deleted) and not os.path.islink(deleted):
        _remove_checkpoint_folders(deleted)
        _remove_if_empty(deleted)


def _remove_if_empty(folder: str) -> None:
    if not os.path.islink(folder) and not os.listdir(folder):
        os.rmdir(folder)


@contextlib.contextmanager
def removed_if_left_empty(
    out_dir: str | os.PathLike | None, *, subfolders: tuple[str, ...] = ()
) -> Iterator[None]:
    """When the block raises, removes what the failed run left empty: ``subfolders`` of
    ``out_dir``, and ``out_dir`` itself if it did not exist when the block began.

    Only empty folders go (``os.rmdir``), so a user's files, and a folder the user made, stay;
    a retry then finds no half-made run.
    """
    created = out_dir is not None and not os.path.exists(out_dir)
    try:
        yield
    except BaseException:
        if out_dir is not None:
            folders = [os.path.join(out_dir, sub) for sub in subfolders] + [out_dir] * created
            for folder in folders:
                with contextlib.suppress(OSError):
                    os.rmdir(folder)
        raise


def check_output_folder(out_dir: str | os.PathLike, *, needed_bytes: int = 0) -> None:
    """Creates ``out_dir`` if needed and checks that a file can be written there and that its
    disk has ``needed_bytes`` free.

    Raises:
      OutputFolderError: it cannot be created or written, or the disk is too full.
    """
    out_dir = os.fspath(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".tmp-probe-", dir=out_dir)
        try:
            os.write(fd, b"clipclop")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.remove(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        raise OutputFolderError(
            f"cannot write to {out_dir} ({reason}): choose a writable output folder."
        ) from None
    free = shutil.disk_usage(out_dir).free
    if free < needed_bytes:
        raise OutputFolderError(
            f"{out_dir} has {_mib(free)} free but this run needs about {_mib(needed_bytes)} "
            "(checkpoints, images, frames): free some space or choose another output folder."
        )


def state_nbytes(template: Any) -> int:
    """Bytes of a run state's arrays (a key counts as its raw data)."""
    total = 0
    for leaf in jax.tree.leaves(template):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            total += 16
        else:
            total += int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize
    return total


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"
