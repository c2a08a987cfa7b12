"""A run's checkpoints: save, list, load and restore the run state, and check its fingerprints.

A checkpoint is one ``.npz`` file, ``checkpoints/step-000000040.npz``, written atomically
(temporary file, fsync, rename; ``io.atomic_write_bytes``), so a crash or a kill at any
instant leaves the previous checkpoint whole. It holds every leaf of the ``RunState``
(population, optimiser state, the key as raw key data, step, losses, best so far), the loss
history, and a JSON ``meta`` record: the run's full config, the fingerprints of its patch
library and CLIP model, the key's PRNG implementation and the leaves' tree paths. The newest
``keep`` checkpoints are kept; older ones are removed only after a newer one is on disk.

Restoring needs a *template*, the run state's structure (``jax.eval_shape`` of a fresh state
for the same config): leaves are checked against it by path, shape and dtype, so a checkpoint
never silently feeds a run of another shape. Resuming also refuses another patch library or
CLIP model (``check_fingerprints``, ``model_fingerprint``). A new field of the saved state goes
in ``meta`` here, with ``FORMAT`` raised if old files cannot be read. The folder's other files
and its checks before a run are in ``run_folder``. See docs/runs.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import zipfile
from typing import Any, NamedTuple

import jax
import numpy as np

from clipclop_jax import io, safe_npy
from clipclop_jax.runs.run_folder import CHECKPOINT_DIR
from clipclop_jax.search.optimise import OPTIONAL_LEAVES, RunState
from clipclop_jax.version import __version__

FORMAT = 1

_NAME = re.compile(r"^step-(\d+)\.npz$")


class Checkpoint(NamedTuple):
    """One checkpoint as read from disk (host arrays).

    Attributes:
      path: the file.
      step: steps done when it was written.
      leaves: the ``RunState`` leaves in tree order; the key as raw key data (uint32).
      history: [step, P] float32 each collage's loss at each step so far.
      meta: config (a ``GenerateConfig.to_dict()``), ``library_fingerprint``,
        ``model_fingerprint``, ``key_impl``, ``paths``, ``version``, ``format``.
    """

    path: str
    step: int
    leaves: list[np.ndarray]
    history: np.ndarray
    meta: dict[str, Any]

    @property
    def config(self) -> dict[str, Any]:
        return self.meta["config"]


def checkpoint_path(out_dir: str | os.PathLike, step: int) -> str:
    return os.path.join(os.fspath(out_dir), CHECKPOINT_DIR, f"step-{step:09d}.npz")


def save_checkpoint(
    out_dir: str | os.PathLike,
    state: RunState,
    history: np.ndarray,
    *,
    config: dict[str, Any],
    library_fingerprint: str,
    model_fingerprint: str,
    keep: int = 2,
    extra_meta: dict[str, Any] | None = None,
) -> str:
    """Writes ``state`` and ``history`` as the checkpoint of ``state.step``; keeps the newest
    ``keep`` checkpoints. ``extra_meta`` joins the meta record (JSON values). Returns the
    file's path."""
    key_impl = str(jax.random.key_impl(state.key))
    host = jax.device_get(state._replace(key=jax.random.key_data(state.key)))
    flat, _ = jax.tree_util.tree_flatten_with_path(host)
    step = int(host.step)
    meta = {
        "format": FORMAT,
        "version": __version__,
        "step": step,
        "config": config,
        "library_fingerprint": library_fingerprint,
        "model_fingerprint": model_fingerprint,
        "key_impl": key_impl,
        "paths": [jax.tree_util.keystr(path) for path, _ in flat],
        **(extra_meta or {}),
    }
    arrays = {f"leaf_{i:04d}": np.asarray(leaf) for i, (_, leaf) in enumerate(flat)}
    path = checkpoint_path(out_dir, step)
    io.save_npz_atomic(
        path,
        **arrays,
        history=np.asarray(history, np.float32),
        meta=np.asarray(json.dumps(meta, sort_keys=True)),
    )
    for old in list_checkpoints(out_dir)[:-keep]:
        if old != path:
            with contextlib.suppress(OSError):
                os.remove(old)
    return path


def list_checkpoints(out_dir: str | os.PathLike) -> list[str]:
    """The run's checkpoint files, oldest first (temporary files are not checkpoints)."""
    folder = os.path.join(os.fspath(out_dir), CHECKPOINT_DIR)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), n) for n in names if (m := _NAME.match(n))]
    return [os.path.join(folder, n) for _, n in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint file of a run, or None."""
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def discard_newer(out_dir: str | os.PathLike, step: int) -> None:
    """Removes checkpoint files of steps after ``step`` (unreadable ones ``load_latest``
    skipped), so that keeping the newest never keeps them in place of good ones."""
    for path in list_checkpoints(out_dir):
        if int(_NAME.match(os.path.basename(path)).group(1)) > step:
            os.remove(path)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Reads one checkpoint file (never unpickling anything).

    Raises:
      ValueError: the file is not a readable checkpoint of this format; one line naming it
        and what to do.
    """
    path = os.fspath(path)
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
            f"{path}: checkpoint format {meta.get('format')!r}; this version reads format "
            f"{FORMAT}: resume it with the clipclop-jax version that wrote it "
            f"({meta.get('version')})."
        )
    return Checkpoint(path, step, leaves, history, meta)


def load_latest(out_dir: str | os.PathLike) -> Checkpoint:
    """The newest readable checkpoint of a run (an unreadable newest one falls back to the one
    before it).

    Raises:
      ValueError: the folder has no readable checkpoint.
    """
    out_dir = os.fspath(out_dir)
    if not os.path.isdir(out_dir):
        raise ValueError(f"{out_dir} is not a run folder: it does not exist.")
    errors = []
    for path in reversed(list_checkpoints(out_dir)):
        try:
            return load_checkpoint(path)
        except ValueError as error:
            errors.append(str(error))
    if errors:
        raise ValueError(
            f"{out_dir} has no readable checkpoint, so its run cannot continue: start it again "
            f"(generate --overwrite). The newest: {errors[0]}"
        )
    raise ValueError(
        f"{out_dir} has no checkpoint to resume from (no {CHECKPOINT_DIR}/step-*.npz): "
        "start the run again with generate."
    )


def restore_state(
    checkpoint: Checkpoint, template: RunState, optional: tuple[str, ...] = OPTIONAL_LEAVES
) -> RunState:
    """The checkpoint's run state (host arrays, typed key), checked against ``template``.

    Leaves are matched by tree path. A leaf of the template that an older checkpoint lacks
    is restored as zeros (all False) if its path is in ``optional``: a field added to the run
    state later (``optimise.OPTIONAL_LEAVES``), whose zero is what the older run had.

    Args:
      checkpoint: from ``load_checkpoint``.
      template: a run state or its ``jax.eval_shape`` for the same config.
      optional: paths (``jax.tree_util.keystr``) that may be missing.

    Raises:
      ValueError: the leaves do not match the template's paths, shapes or dtypes.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    saved = dict(zip(checkpoint.meta.get("paths", []), checkpoint.leaves, strict=False))
    wanted = [jax.tree_util.keystr(path) for path, _ in flat]
    missing = [p for p in wanted if p not in saved and p not in optional]
    if missing or len(saved) != len(checkpoint.leaves) or set(saved) - set(wanted):
        raise ValueError(
            f"{checkpoint.path} holds {len(checkpoint.leaves)} arrays but this config's run "
            f"state has {len(flat)}: it was written by another version of clipclop-jax."
        )
    leaves = []
    for (_, want), name in zip(flat, wanted, strict=True):
        got = saved.get(name)
        if got is None:
            leaves.append(np.zeros(want.shape, want.dtype))
            continue
        leaves.append(got)
        if jax.dtypes.issubdtype(want.dtype, jax.dtypes.prng_key):
            continue  # raw key data; checked when wrapped below
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(
                f"{checkpoint.path}: {name} is {got.dtype}{list(got.shape)} "
                f"but this config needs {want.dtype}{list(want.shape)}."
            )
    state = jax.tree.unflatten(treedef, leaves)
    key = jax.random.wrap_key_data(state.key, impl=checkpoint.meta["key_impl"])
    if key.shape != template.key.shape:
        raise ValueError(f"{checkpoint.path}: the run key has shape {key.shape}.")
    return state._replace(key=key)


def check_fingerprints(
    checkpoint: Checkpoint, *, library_fingerprint: str, model_fingerprint: str
) -> None:
    """Refuses to continue a run with another patch library or CLIP model than it started with.

    Raises:
      ValueError: a fingerprint differs; the message names the setting and both digests.
    """
    config = checkpoint.config
    pairs = (
        ("patch library", "patches", checkpoint.meta["library_fingerprint"], library_fingerprint),
        ("CLIP model", "model", checkpoint.meta["model_fingerprint"], model_fingerprint),
    )
    for what, setting, saved, loaded in pairs:
        if saved != loaded:
            raise ValueError(
                f"the {what} differs from the one this run started with ({setting}="
                f"{config.get(setting)!r} gives fingerprint {loaded[:12]}, the checkpoint "
                f"has {saved[:12]}): resume with the original {what}, or start a new run."
            )


def model_fingerprint(params: Any) -> str:
    """A cheap digest of CLIP weights: every leaf's path, shape and dtype, plus a strided
    sample of up to eight leaves' values (any retrained or fine-tuned model differs there).
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(params)
    digest = hashlib.sha256()
    for path, leaf in flat:
        digest.update(f"{jax.tree_util.keystr(path)}:{np.shape(leaf)}:{leaf.dtype};".encode())
    picks = sorted(set(np.linspace(0, len(flat) - 1, min(8, len(flat))).astype(int).tolist()))
    for i in picks:
        values = np.asarray(flat[i][1]).reshape(-1)
        digest.update(np.ascontiguousarray(values[:: max(1, values.size // 65536)]).tobytes())
    return digest.hexdigest()[:32]


def extra_meta(checkpoint: Checkpoint) -> dict[str, Any]:
    """The entries of a checkpoint's meta record that ``save_checkpoint`` was given as
    ``extra_meta`` (so that a rewrite keeps them)."""
    own = {"format", "version", "step", "config", "library_fingerprint", "model_fingerprint"}
    return {k: v for k, v in checkpoint.meta.items() if k not in own | {"key_impl", "paths"}}


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Only the ``meta`` record of a checkpoint (cheap: no arrays are read)."""
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))
