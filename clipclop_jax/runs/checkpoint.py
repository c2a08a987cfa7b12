"""A run's checkpoints: save, list, load and restore the run state, and check its fingerprints.

A checkpoint is one orbax checkpoint folder, ``checkpoints/step_000000040/``, written by
``orbax.checkpoint.CheckpointManager`` (into a temporary folder, renamed when complete), so a
crash or a kill at any instant leaves the previous checkpoint whole. Its ``state`` item holds
every leaf of the ``RunState`` (population, optimiser state, the key as raw key data, step,
losses, best so far) as ``leaf_NNNN`` and the loss ``history``; its ``meta`` item is JSON: the
run's full config, the fingerprints of its patch library and CLIP model, the key's PRNG
implementation, the leaves' tree paths, shapes and dtypes, and what the caller adds
(``extra_meta``). The newest ``keep`` checkpoints are kept (the manager's ``max_to_keep``).

Every process of a multi-process run calls ``save_checkpoint``: each writes its share of the
population, and ``restore_state(..., mesh=...)`` reads the state straight into the shardings
of the mesh it continues on, which may have another process or device count (the population
must still divide). Folders of clipclop-jax up to 0.2 hold ``checkpoints/step-N.npz`` files;
``npz_checkpoint`` reads them, and a resumed old run goes on in the new format.

Restoring needs a *template*, the run state's structure (``jax.eval_shape`` of a fresh state
for the same config): leaves are checked against it by path, shape and dtype, so a checkpoint
never silently feeds a run of another shape. Resuming also refuses another patch library or
CLIP model (``check_fingerprints``, ``model_fingerprint``). A new field of the saved state goes
in ``meta`` here, with ``FORMAT`` raised if old checkpoints cannot be read. The folder's other
files and its checks before a run are in ``run_folder``. See docs/runs.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from typing import Any, NamedTuple

import jax
import numpy as np

from clipclop_jax.runs import npz_checkpoint, processes
from clipclop_jax.runs.run_folder import CHECKPOINT_DIR, DELETED_DIR
from clipclop_jax.search import sharding
from clipclop_jax.search.optimise import OPTIONAL_LEAVES, RunState
from clipclop_jax.version import __version__

FORMAT = 2

_PREFIX = "step"
_NAME = re.compile(r"^step_(\d+)$")  # an orbax step folder (its temporary twin never matches)
_ITEMS = ("state", "meta")
_HISTORY = "history"


class Checkpoint(NamedTuple):
    """One checkpoint as read from disk (host arrays).

    Attributes:
      path: its folder (or, written by clipclop-jax up to 0.2, its ``.npz`` file).
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
    return os.path.join(os.fspath(out_dir), CHECKPOINT_DIR, f"{_PREFIX}_{step:09d}")


def _manager(out_dir: str, keep: int):
    import orbax.checkpoint as ocp  # a second of imports: only runs that save pay it

    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep,
        step_prefix=_PREFIX,
        step_format_fixed_length=9,
        # Synchronous: a checkpoint is whole on disk when save_checkpoint returns (the run
        # then writes params.npz and collage.png from the same state, and may be killed).
        enable_async_checkpointing=False,
        create=True,
        # Old steps are first renamed out of the way, then removed: a kill half-way through a
        # removal must not leave a half-removed step that still looks like a checkpoint.
        todelete_subdir=DELETED_DIR,
    )
    folder = os.path.abspath(os.path.join(out_dir, CHECKPOINT_DIR))
    return ocp.CheckpointManager(folder, options=options, item_names=_ITEMS)


def _items(state_tree: dict, meta: dict):
    import orbax.checkpoint as ocp

    return ocp.args.Composite(state=ocp.args.StandardSave(state_tree), meta=ocp.args.JsonSave(meta))


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
    """Writes ``state`` and ``history`` as the checkpoint of ``state.step`` (replacing one of
    that step, as a studio edit does); keeps the newest ``keep`` checkpoints. ``extra_meta``
    joins the meta record (JSON values). In a multi-process run every process calls it with
    its (global) state. Returns the checkpoint's folder."""
    out_dir = os.fspath(out_dir)
    key_impl = str(jax.random.key_impl(state.key))
    raw = state._replace(key=jax.random.key_data(state.key))
    flat, _ = jax.tree_util.tree_flatten_with_path(raw)
    # Arrays stay where they are (a pod slice's population is spread over its hosts).
    leaves = [leaf if isinstance(leaf, jax.Array) else np.asarray(leaf) for _, leaf in flat]
    step = int(raw.step)
    meta = {
        "format": FORMAT,
        "version": __version__,
        "step": step,
        "config": config,
        "library_fingerprint": library_fingerprint,
        "model_fingerprint": model_fingerprint,
        "key_impl": key_impl,
        "paths": [jax.tree_util.keystr(path) for path, _ in flat],
        "shapes": [list(leaf.shape) for leaf in leaves],
        "dtypes": [str(leaf.dtype) for leaf in leaves],
        **(extra_meta or {}),
    }
    tree = {f"leaf_{i:04d}": leaf for i, leaf in enumerate(leaves)}
    tree[_HISTORY] = np.asarray(history, np.float32)
    meta["history_shape"] = list(tree[_HISTORY].shape)
    # orbax stores no empty array (the history at step 0): the meta's shapes remake it.
    tree = {name: leaf for name, leaf in tree.items() if leaf.size}
    path = checkpoint_path(out_dir, step)
    with _manager(out_dir, keep) as manager:
        if step in manager.all_steps():
            _replace_step(os.path.abspath(path), _items(tree, meta))  # orbax wants it absolute
        else:
            manager.save(step, args=_items(tree, meta))
    if processes.is_writer():
        shutil.rmtree(os.path.join(out_dir, CHECKPOINT_DIR, DELETED_DIR), ignore_errors=True)
        # A resumed run of clipclop-jax 0.2 keeps as many checkpoints in all, old files too.
        for old in list_checkpoints(out_dir)[:-keep]:
            if old.endswith(".npz"):
                with contextlib.suppress(OSError):
                    os.remove(old)
    processes.sync("clipclop-checkpoint-saved")
    return path


def _replace_step(path: str, items) -> None:
    """Writes a step again: the new folder whole beside the old one, then swapped in (a crash
    in between leaves the older steps, and at worst this step's previous folder aside)."""
    import orbax.checkpoint as ocp

    fresh, stale = f"{path}.clipclop-new", f"{path}.clipclop-old"
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(fresh, args=items, force=True)
    if processes.is_writer():
        os.rename(path, stale)
        os.rename(fresh, path)
        shutil.rmtree(stale)
    processes.sync("clipclop-checkpoint-replaced")


def list_checkpoints(out_dir: str | os.PathLike) -> list[str]:
    """The run's checkpoints, oldest first: orbax step folders and the ``.npz`` files of
    clipclop-jax up to 0.2 (temporary folders and files are not checkpoints)."""
    folder = os.path.join(os.fspath(out_dir), CHECKPOINT_DIR)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if (m := _NAME.match(name)) and os.path.isdir(os.path.join(folder, name)):
            found.append((int(m.group(1)), 1, name))
        elif m := npz_checkpoint.NAME.match(name):
            found.append((int(m.group(1)), 0, name))
    return [os.path.join(folder, n) for *_, n in sorted(found)]


def latest_checkpoint(out_dir: str | os.PathLike) -> str | None:
    """The newest checkpoint of a run, or None."""
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def _step_of(path: str) -> int:
    name = os.path.basename(path)
    match = _NAME.match(name) or npz_checkpoint.NAME.match(name)
    return int(match.group(1))


def discard_newer(out_dir: str | os.PathLike, step: int) -> None:
    """Removes checkpoints of steps after ``step`` (unreadable ones ``load_latest``
    skipped), so that keeping the newest never keeps them in place of good ones."""
    if processes.is_writer():
        for path in list_checkpoints(out_dir):
            if _step_of(path) > step:
                if os.path.isdir(path):
                    shutil.rmtree(path)
                else:
                    os.remove(path)
    processes.sync("clipclop-checkpoints-discarded")


def _unreadable(path: str, reason: str) -> ValueError:
    return ValueError(
        f"{path}: not a readable checkpoint ({reason}): delete it or resume from an older "
        "checkpoint."
    )


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Reads one checkpoint (never unpickling anything): its arrays whole, on the host.

    Raises:
      ValueError: it is not a readable checkpoint of a format this version reads; one line
        naming it and what to do.
    """
    path = os.fspath(path)
    if path.endswith(".npz"):
        return Checkpoint(path, *npz_checkpoint.read(path))
    meta = read_meta(path)
    if meta.get("format") != FORMAT:
        raise ValueError(
            f"{path}: checkpoint format {meta.get('format')!r}; this version reads formats "
            f"{npz_checkpoint.FORMAT} and {FORMAT}: resume it with the clipclop-jax version "
            f"that wrote it ({meta.get('version')})."
        )
    try:
        target = {
            f"leaf_{i:04d}": np.zeros(shape, dtype)
            for i, (shape, dtype) in enumerate(zip(meta["shapes"], meta["dtypes"], strict=True))
        }
        target[_HISTORY] = np.zeros(meta["history_shape"], np.float32)
        stored = _restore(path, {name: leaf for name, leaf in target.items() if leaf.size})
        tree = {**target, **stored}
    except Exception as error:  # ours (KeyError, ...) and tensorstore's and orbax's own kinds
        raise _unreadable(path, f"{type(error).__name__}: {str(error)[:200]}") from None
    leaves = [np.asarray(tree[f"leaf_{i:04d}"]) for i in range(len(meta["paths"]))]
    return Checkpoint(path, int(meta["step"]), leaves, np.asarray(tree[_HISTORY]), meta)


def _restore(path: str, target: dict) -> dict:
    """The ``state`` item of an orbax checkpoint, into ``target``'s shapes, dtypes and
    shardings (numpy leaves: host arrays; ``jax.ShapeDtypeStruct`` with a sharding: arrays
    there, each process reading only its shards)."""
    import orbax.checkpoint as ocp

    items = ocp.args.Composite(state=ocp.args.StandardRestore(target))
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        return checkpointer.restore(os.path.abspath(path), args=items).state


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
        f"{out_dir} has no checkpoint to resume from (nothing in {CHECKPOINT_DIR}/): "
        "start the run again with generate."
    )


def restore_state(
    checkpoint: Checkpoint,
    template: RunState,
    optional: tuple[str, ...] = OPTIONAL_LEAVES,
    *,
    mesh: jax.sharding.Mesh | None = None,
) -> RunState:
    """The checkpoint's run state (typed key), checked against ``template``: host arrays, or
    with ``mesh`` arrays already placed as ``sharding.shard_run_state`` places them.

    Leaves are matched by tree path. A leaf of the template that an older checkpoint lacks
    is restored as zeros (all False) if its path is in ``optional``: a field added to the run
    state later (``optimise.OPTIONAL_LEAVES``), whose zero is what the older run had.

    Args:
      checkpoint: from ``load_checkpoint``.
      template: a run state or its ``jax.eval_shape`` for the same config.
      optional: paths (``jax.tree_util.keystr``) that may be missing.
      mesh: the mesh the run continues on (any device or process count the population
        divides over); an orbax checkpoint is then read straight into its shardings, each
        process reading only its own collages.

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
    if mesh is None:
        return state._replace(key=key)
    return _restore_placed(checkpoint, state, treedef, wanted, mesh)


def _restore_placed(checkpoint, host: RunState, treedef, wanted: list[str], mesh) -> RunState:
    """``host``'s run state read again, into the mesh's shardings (re-sharded if the run was
    saved on another device or process count). A leaf the checkpoint lacks is placed from
    ``host``'s zeros."""
    placement = jax.tree.leaves(sharding.run_state_shardings(host, mesh))
    raw = host._replace(key=jax.random.key_data(host.key))
    flat = jax.tree.leaves(raw)
    if checkpoint.path.endswith(".npz"):  # small and whole on every host: just placed
        leaves = [sharding.put(leaf, where) for leaf, where in zip(flat, placement, strict=True)]
    else:
        index = {name: i for i, name in enumerate(checkpoint.meta["paths"])}
        target = {
            f"leaf_{index[name]:04d}": jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=where)
            for name, leaf, where in zip(wanted, flat, placement, strict=True)
            if name in index and leaf.size
        }
        history = np.zeros(checkpoint.meta["history_shape"], np.float32)
        if history.size:  # orbax restores the whole item; read on the host, small
            target[_HISTORY] = history
        placed = _restore(checkpoint.path, target)
        leaves = [
            placed[f"leaf_{index[name]:04d}"]
            if name in index and leaf.size
            else sharding.put(leaf, where)
            for name, leaf, where in zip(wanted, flat, placement, strict=True)
        ]
    state = jax.tree.unflatten(treedef, leaves)
    return state._replace(key=jax.random.wrap_key_data(state.key, impl=checkpoint.meta["key_impl"]))


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
    own |= {"key_impl", "paths", "shapes", "dtypes", "history_shape"}
    return {k: v for k, v in checkpoint.meta.items() if k not in own}


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Only the ``meta`` record of a checkpoint (cheap: no arrays are read).

    Raises:
      ValueError: it has no readable meta record.
    """
    path = os.fspath(path)
    if path.endswith(".npz"):
        return npz_checkpoint.read_meta(path)
    try:
        # The JSON item orbax's JsonSave wrote: plain text, read without orbax.
        with open(os.path.join(path, "meta", "metadata"), encoding="utf-8") as file:
            meta = json.load(file)
        if not isinstance(meta, dict):
            raise TypeError("the meta record is not a JSON object")
    except (OSError, ValueError, TypeError) as error:
        raise _unreadable(path, f"{type(error).__name__}: {str(error)[:200]}") from None
    return meta
