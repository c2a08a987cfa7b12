"""The studio's edits: JSON objects checked in full before anything changes, then applied to
a run state's host copy (numpy), between compiled chunks.

Each edit names a population member (an int, or None for every member) and a patch slot.
Geometry is in the units the page works in: canvas pixels for moves and places, on-screen
factors for scale and squeeze, degrees clockwise on screen for rotation; the result is
clamped to the run's parameter ranges (``params.bounds``). Everything here is numpy, so no
edit compiles anything. docs/runs.md lists the vocabulary.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from clipclop_jax.collage.params import Collage, CollageParams, bounds
from clipclop_jax.config import CollageConfig

# op -> its fields besides "op" (each edit must have exactly these).
SLOT = ("member", "patch")
OPS: dict[str, tuple[str, ...]] = {
    "move": (*SLOT, "dx", "dy"),
    "scale": (*SLOT, "factor"),
    "rotate": (*SLOT, "degrees"),
    "squeeze": (*SLOT, "factor"),
    "recolour": (*SLOT, "colour"),
    "front": SLOT,
    "back": SLOT,
    "swap": (*SLOT, "library_patch"),
    "hide": SLOT,
    "show": SLOT,
    "add": ("member", "library_patch", "x", "y"),
    "freeze": SLOT,
    "unfreeze": SLOT,
    "prompt": ("prompt",),
}

# Sane bounds: anything beyond is a mistake or an attack, not an artist's drag.
MAX_PIXELS = 100_000.0
MIN_FACTOR, MAX_FACTOR = 0.01, 100.0
MAX_DEGREES = 3600.0
MAX_COLOUR = 100.0
MAX_PROMPT_CHARS = 10_000


class Slots(NamedTuple):
    """What an edit acts on: the host copy of the parts of a run state edits change."""

    population: Collage  # numpy leaves, [P, N, ...]
    frozen: np.ndarray  # [P, N] bool
    hidden: np.ndarray  # [P, N] bool


def check_edit(edit: Any, *, population: int, num_patches: int, library_size: int) -> dict:
    """Checks an edit completely; returns it with numbers as Python floats and ints.

    Raises:
      ValueError: one line naming the problem (unknown op or field, missing field, wrong
        type, number not finite or out of bounds, unknown member, patch or library patch).
    """
    if not isinstance(edit, dict):
        raise ValueError(f"an edit is a JSON object, not {type(edit).__name__}.")
    op = edit.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ValueError(f"unknown edit op {op!r}: use one of {', '.join(OPS)}.")
    fields = OPS[op]
    extra = sorted(set(edit) - {"op", *fields})
    missing = [f for f in fields if f not in edit]
    if extra or missing:
        raise ValueError(
            f"edit {op!r} takes the fields {', '.join(fields)}"
            + (f"; unknown: {', '.join(map(str, extra))}" if extra else "")
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + "."
        )
    checked = {"op": op}
    for name in fields:
        value = edit[name]
        if name == "member":
            checked[name] = None if value is None else _integer(op, name, value, population)
        elif name == "patch":
            checked[name] = _integer(op, name, value, num_patches)
        elif name == "library_patch":
            checked[name] = _integer(op, name, value, library_size)
        elif name in ("dx", "dy", "x", "y"):
            checked[name] = _number(op, name, value, -MAX_PIXELS, MAX_PIXELS)
        elif name == "factor":
            checked[name] = _number(op, name, value, MIN_FACTOR, MAX_FACTOR)
        elif name == "degrees":
            checked[name] = _number(op, name, value, -MAX_DEGREES, MAX_DEGREES)
        elif name == "colour":
            if not isinstance(value, list | tuple) or len(value) != 3:
                raise ValueError(f"edit {op!r}: colour must be a list of 3 numbers.")
            checked[name] = [_number(op, name, v, -MAX_COLOUR, MAX_COLOUR) for v in value]
        elif name == "prompt":
            if not isinstance(value, str) or len(value) > MAX_PROMPT_CHARS:
                raise ValueError(
                    f"edit {op!r}: prompt must be a string of at most {MAX_PROMPT_CHARS} "
                    "characters."
                )
            checked[name] = value
    return checked


def _integer(op: str, name: str, value: Any, limit: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < limit:
        raise ValueError(
            f"edit {op!r}: {name} must be an integer in 0..{limit - 1}, not {value!r}."
        )
    return int(value)


def _number(op: str, name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"edit {op!r}: {name} must be a number, not {value!r}.")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"edit {op!r}: {name} must be a finite number in [{low}, {high}].")
    return value


def members(edit: dict, population: int) -> list[int]:
    """The population members an edit acts on."""
    return list(range(population)) if edit["member"] is None else [edit["member"]]


def apply_edit(slots: Slots, edit: dict, config: CollageConfig) -> tuple[Slots, np.ndarray]:
    """Applies a checked slot edit (not "prompt") to a host copy.

    Returns:
      The new slots (new arrays; the input is untouched) and the [P, N] bool mask of the
      slots it touched (what undo restores).

    Raises:
      ValueError: "add" finds no hidden slot to show in a member (nothing changed).
    """
    population, frozen, hidden = slots
    params = {k: np.array(v) for k, v in population.params._asdict().items()}
    index = np.array(population.patch_index)
    frozen, hidden = np.array(frozen), np.array(hidden)
    size, count = index.shape
    touched = np.zeros((size, count), bool)
    height, width = config.canvas_shape
    op = edit["op"]
    targets = members(edit, size)
    if op == "add":
        free = [np.flatnonzero(hidden[m]) for m in targets]
        if any(len(f) == 0 for f in free):
            raise ValueError(
                "edit 'add': no hidden slot to show a patch in: hide a patch first (the "
                "number of patches is fixed by the run's config)."
            )
        spots = [(m, int(f[0])) for m, f in zip(targets, free, strict=True)]
    else:
        spots = [(m, edit["patch"]) for m in targets]
    for m, i in spots:
        touched[m, i] = True
        if op == "move":
            params["translation"][m, i] += np.float32(
                [2.0 * edit["dx"] / width, 2.0 * edit["dy"] / height]
            )
        elif op == "scale":  # the parameter divides the size
            params["scale"][m, i] /= np.float32(edit["factor"])
        elif op == "squeeze":
            params["squeeze"][m, i] *= np.float32(edit["factor"])
        elif op == "rotate":
            # The sampling matrix rotates canvas offsets by +r into the patch, so the patch
            # shows turned by -r: y points down, so -r is clockwise on screen.
            turned = params["rotation"][m, i] - np.float32(math.radians(edit["degrees"]))
            params["rotation"][m, i] = (turned + np.pi) % (2 * np.pi) - np.pi
        elif op == "recolour":
            params["colour"][m, i] = np.float32(edit["colour"])
        elif op in ("front", "back"):
            params["order"][m, i] = 1.0 if op == "front" else 0.0
        elif op == "swap":
            index[m, i] = edit["library_patch"]
        elif op in ("hide", "show"):
            hidden[m, i] = op == "hide"
        elif op == "add":
            index[m, i] = edit["library_patch"]
            params["translation"][m, i] = np.float32(
                [2.0 * edit["x"] / width - 1.0, 2.0 * edit["y"] / height - 1.0]
            )
            hidden[m, i] = False
        elif op in ("freeze", "unfreeze"):
            frozen[m, i] = op == "freeze"
        else:
            raise ValueError(f"edit {op!r} is not a slot edit.")
    clamped = CollageParams(**clamp_host(params, config))
    return Slots(Collage(clamped, index), frozen, hidden), touched


def clamp_host(params: dict[str, np.ndarray], config: CollageConfig) -> dict[str, np.ndarray]:
    """``params.clamp`` in numpy (the same bounds), so an edit compiles nothing."""
    out = {}
    for (name, value), (low, high) in zip(params.items(), bounds(config), strict=True):
        low, high = np.float32(low), np.float32(high)
        out[name] = np.clip(value, low, high).astype(value.dtype)
    return out


def restore(current: Slots, before: Slots, touched: np.ndarray) -> Slots:
    """``current`` with the slots in ``touched`` ([P, N]) put back as in ``before``."""

    def pick(now, then):
        mask = touched.reshape(touched.shape + (1,) * (np.ndim(now) - 2))
        return np.where(mask, then, now)

    population = Collage(
        CollageParams(
            *(
                pick(a, b)
                for a, b in zip(current.population.params, before.population.params, strict=True)
            )
        ),
        pick(current.population.patch_index, before.population.patch_index),
    )
    return Slots(
        population, pick(current.frozen, before.frozen), pick(current.hidden, before.hidden)
    )
