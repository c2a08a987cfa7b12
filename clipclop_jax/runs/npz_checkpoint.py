"""The checkpoint files of clipclop-jax up to 0.2: one ``checkpoints/step-N.npz`` each.

Runs now checkpoint through orbax (``checkpoint``); this small reader keeps the older run
folders resumable. Such a file holds every ``RunState`` leaf as ``leaf_NNNN`` (the key as raw
key data), the ``[step, P]`` loss ``history`` and a JSON ``meta`` record (config,
fingerprints, ``key_impl``, the leaves' tree ``paths``, ``format`` 1). It is read with
``allow_pickle=False``: an object array in it is refused, never unpickled.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from typing import Any

import numpy as np

from clipclop_jax import safe_npy

FORMAT = 1

NAME = re.compile(r"^step-(\d+)\.npz$")


def read(path: str) -> tuple[int, list[np.ndarray], np.ndarray, dict[str, Any]]:
    """The step, leaves, history and meta record of one old checkpoint file.

    Raises:
      ValueError: not a readable checkpoint of format 1; one line naming it and what to do.
    """
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") == FORMAT:
                count = len(meta["paths"])
                leaves = [data[f"leaf_{i:04d}"] for i in range(count)]
                history = data["history"]
                step = int(meta["step"])
    except (
        OSError,
        KeyError,
        TypeError,
        AttributeError,
        ValueError,
        zipfile.BadZipFile,
        json.JSONDecodeError,
        EOFError,
    ) as error:
        reason = safe_npy.load_error_reason(error)
        raise ValueError(
            f"{path}: not a readable checkpoint ({reason}): delete it or resume from an older "
            "checkpoint."
        ) from None
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path}: checkpoint format {meta.get('format')!r}; this version reads formats "
            f"{FORMAT} and 2: resume it with the clipclop-jax version that wrote it "
            f"({meta.get('version')})."
        )
    return step, leaves, history, meta


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Only the ``meta`` record (no arrays are read)."""
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))
