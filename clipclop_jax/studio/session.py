"""``Session``: a run folder opened for stepping by hand and editing between chunks.

A session is a run as ``generate`` drives it (``runs.generate``'s ``start_run`` /
``open_run``, ``place_run``, ``run_chunks``, ``RunFiles``), stopped wherever the artist
likes: ``advance(n)`` runs the same compiled chunks, and edits change the run state's host
copy between them. Edits never recompile: they change array values only (the frozen and
hidden masks are run-state leaves), and the prompts sit in a fixed number of slots
(``PROMPT_SLOTS``; unused ones weigh 0).

The folder is a run folder plus ``edits.jsonl``: one checked edit per line with the step it
was made at (undo and redo are entries too). Every edit is followed by a checkpoint that
records how many log entries it holds, so ``open`` (and ``clipclop resume``) continue with
every edit, and ``replay`` makes the same collage bit for bit from the config and the log.
Not thread-safe: call it from one thread.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from clipclop_jax import io
from clipclop_jax.collage.params import Collage, CollageParams, take
from clipclop_jax.collage.render import render_population
from clipclop_jax.collage.transforms import patch_corners
from clipclop_jax.guidance.prompts import parse_prompts
from clipclop_jax.runs import checkpoint, run_folder
from clipclop_jax.runs.chunks import ProgressFn, run_chunks
from clipclop_jax.runs.generate import open_run, place_run, start_run
from clipclop_jax.runs.interrupt import RunInterrupted
from clipclop_jax.runs.outputs import GenerateResult, write_image, write_params
from clipclop_jax.runs.reblend import blend_run
from clipclop_jax.runs.resources import Resources, model_fingerprint
from clipclop_jax.runs.settings import GenerateConfig
from clipclop_jax.search.optimise import visible
from clipclop_jax.studio import edits as edit_ops

# Prompts a session holds without recompiling: the text embeddings are [PROMPT_SLOTS, D]
# whatever the prompt, the unused rows weighing 0 (adding 0 changes no sum).
PROMPT_SLOTS = 8
EDITS_KEY = "edits_applied"  # checkpoint meta: how many log entries its state holds
MAX_UNDO = 200
EXPORT_BLEND = "poisson"  # export(blend=True) of a run whose config blends nothing


class SessionView(NamedTuple):
    """A host snapshot of a session (numpy arrays)."""

    step: int
    total_steps: int
    losses: np.ndarray  # [P] latest loss of each member (+inf before the first step)
    best_loss: float
    best_member: int  # member with the lowest latest loss
    history: np.ndarray  # [step, P]
    params: CollageParams  # [P, N, ...]
    patch_index: np.ndarray  # [P, N]
    frozen: np.ndarray  # [P, N] bool
    hidden: np.ndarray  # [P, N] bool
    prompt: str
    can_undo: bool
    can_redo: bool


class _Change(NamedTuple):
    """One undoable edit: the edit, the slots before it, the slots it touched, the prompt
    before it."""

    edit: dict
    before: edit_ops.Slots | None
    touched: np.ndarray | None
    prompt: str


class Session:
    """A run opened for stepping and editing (see the module docstring).

    Attributes:
      config: the run's config now (its prompt follows prompt edits; its ``optim.steps``
        grows when ``advance`` goes past it).
      out_dir: the run folder.
    """

    def __init__(self, config, out_dir, resources, run, state, history, log, applied):
        self.out_dir = out_dir
        self._resources = resources
        self._library_size = resources.library.num_patches
        self._alpha_maps: np.ndarray | None = None
        run = run._replace(guidance=_prompt_guidance(run.guidance, config.prompt, resources))
        run, state, files, chunk = place_run(config, resources, run, state, out_dir)
        self._run, self._state, self._files, self._chunk = run, state, files, chunk
        self._history = np.asarray(history, np.float32)
        self._log = list(log)
        self._undo: list[_Change] = []
        self._redo: list[_Change] = []
        # True: each edit is checkpointed as it is made. The web worker sets False and calls
        # save_edits() once it has sent the edited frame, so a checkpoint's write is not on
        # the path from an edit to its picture: the log, written at once, already restores
        # an edit that no checkpoint holds (see the replay below).
        self.checkpoint_each_edit = True
        self._edits_unsaved = False
        self._set_config(config)
        self._files.extra_meta = {EDITS_KEY: applied}
        if len(self._log) < applied:
            raise ValueError(
                f"{out_dir}: {run_folder.EDITS_FILE} holds {len(self._log)} edits but the "
                f"checkpoint holds {applied}: restore the log, or remove it to continue "
                "without it."
            )
        # Edits logged after the newest checkpoint (a crash between the two): again.
        for number, entry in enumerate(self._log[applied:], start=applied + 1):
            entry = dict(entry)
            step = entry.pop("step")
            if step < self.step:
                raise ValueError(
                    f"{out_dir}: {run_folder.EDITS_FILE} has an edit at step {step} after a "
                    f"checkpoint of step {self.step}: the log does not belong to this run."
                )
            self.advance(step - self.step)
            if entry.get("op") in ("undo", "redo") and not (
                self._undo if entry["op"] == "undo" else self._redo
            ):
                continue  # its edit is in the checkpoint already, its undo state is not
            self._do(entry, log=False)
            self._files.extra_meta = {EDITS_KEY: number}
        self._files.extra_meta = {EDITS_KEY: len(self._log)}

    # -- opening -----------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        config: GenerateConfig,
        out_dir: str | os.PathLike,
        *,
        resources: Resources | None = None,
        overwrite: bool = False,
    ) -> Session:
        """A new session in a new run folder: the same checks and files as ``generate``,
        then a checkpoint of step 0 and an empty ``edits.jsonl``."""
        if config.tiles is not None:
            raise ValueError("a studio session edits one canvas: run it without tiles.")
        _prompt_count(config.prompt)
        out_dir = os.fspath(out_dir)
        with run_folder.removed_if_left_empty(out_dir):
            config, resources, run, state = start_run(config, out_dir, resources, overwrite)
            history = np.zeros((0, config.population), np.float32)
            session = cls(config, out_dir, resources, run, state, history, [], 0)
            session.save()
            return session

    @classmethod
    def open(
        cls,
        run_dir: str | os.PathLike,
        *,
        patches: str | os.PathLike | None = None,
        model: str | os.PathLike | None = None,
        resources: Resources | None = None,
    ) -> Session:
        """Continues a run folder by hand: one ``generate`` wrote (finished or interrupted),
        a prompt's folder of a batch, a tile's folder of a tiled run, or a session's folder
        (with its edits). ``patches``/``model``: their new places, if they moved."""
        out_dir = os.fspath(run_dir)
        if not checkpoint.list_checkpoints(out_dir) and os.path.isdir(
            os.path.join(out_dir, run_folder.TILE_DIR)
        ):
            raise ValueError(f"{out_dir} is a tiled run: open one of its tiles/rRcC folders.")
        log = read_log(out_dir)
        config, resources, run, state, saved = open_run(
            out_dir, patches=patches, model=model, resources=resources
        )
        applied = saved.meta.get(EDITS_KEY, 0)
        return cls(config, out_dir, resources, run, state, saved.history, log, applied)

    # -- state -------------------------------------------------------------------------

    @property
    def step(self) -> int:
        return int(self._state.step)

    @property
    def edits_made(self) -> int:
        """How many entries the edit log holds (undo and redo count too): with ``step`` it
        names the state, so a picture drawn at the same (step, edits_made) is still true."""
        return len(self._log)

    @property
    def total_steps(self) -> int:
        return self.config.optim.steps

    @property
    def population_size(self) -> int:
        return self.config.population

    @property
    def num_patches(self) -> int:
        return self.config.collage.num_patches

    @property
    def library_size(self) -> int:
        return self._library_size

    def _set_config(self, config: GenerateConfig) -> None:
        self.config = config
        self._files.config = config

    def view(self) -> SessionView:
        """A host snapshot: step, losses, parameters, masks, prompt, undo/redo."""
        state = jax.device_get(self._state._replace(key=None))
        losses = np.asarray(state.losses)
        return SessionView(
            step=int(state.step),
            total_steps=self.total_steps,
            losses=losses,
            best_loss=float(state.best_loss),
            best_member=_leader(losses),
            history=self._history.copy(),
            params=CollageParams(*(np.asarray(p) for p in state.population.params)),
            patch_index=np.asarray(state.population.patch_index),
            frozen=np.asarray(state.frozen),
            hidden=np.asarray(state.hidden),
            prompt=self.config.prompt,
            can_undo=bool(self._undo),
            can_redo=bool(self._redo),
        )

    # -- stepping ----------------------------------------------------------------------

    def advance(
        self,
        steps: int,
        progress_fn: ProgressFn | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> dict[str, Any]:
        """Runs ``steps`` more steps in the run's compiled chunks (chunks end at multiples of
        ``chunk_steps`` or here); past ``total_steps`` the run grows to the new step.
        ``progress_fn(step, metrics)`` after each chunk; ``should_stop()`` before each (True
        stops early).

        Returns:
          ``{"step", "best_loss", "mean_loss", "losses" [P], "steps_per_second"}``.
        """
        if isinstance(steps, bool) or not isinstance(steps, int) or not 0 <= steps <= 10**7:
            raise ValueError(f"steps must be an integer in 0..10000000, not {steps!r}.")
        until = self.step + steps
        if until > self.total_steps:
            # The compiled chunk does not depend on optim.steps (its Adam rates do not), so
            # the run grows without compiling; the checkpoints record the new length.
            optim = dataclasses.replace(self.config.optim, steps=until)
            self._set_config(dataclasses.replace(self.config, optim=optim))
        start = time.perf_counter()
        state, history = run_chunks(
            self._chunk,
            self._state,
            self._run.guidance,
            self.config.optim,
            progress_fn,
            history=self._history,
            after_chunk=self._files.after_chunk,
            should_stop=should_stop,
            until=until,
        )
        elapsed = time.perf_counter() - start
        steps = len(history) - len(self._history)
        self._state, self._history = state, history
        losses = np.asarray(state.losses)
        return {
            "step": self.step,
            "best_loss": float(state.best_loss),
            "mean_loss": float(np.mean(losses)),
            "losses": losses.tolist(),
            "steps_per_second": steps / max(elapsed, 1e-9),
        }

    # -- pictures and geometry -----------------------------------------------------------

    def _member(self, member: int | None) -> int:
        if member is None:
            return _leader(np.asarray(self._state.losses))
        return edit_ops._integer("render", "member", member, self.population_size)

    def render(self, member: int | None = None) -> np.ndarray:
        """[H, W, 3] uint8: a member as CLIP sees it (canvas size, low-res library); None:
        the member with the lowest latest loss."""
        member = self._member(member)
        state = self._state
        # Only the member asked for (a population of one: the page renders after every
        # chunk, and drawing the whole population would cost P times as much).
        drawn = jax.tree.map(lambda leaf: leaf[member : member + 1], state.population)
        drawn = visible(drawn, state.hidden[member : member + 1])
        image = render_population(
            drawn, self._run.guidance.library, self._run.guidance.background, self.config.collage
        )[0]
        return io.to_uint8(np.asarray(image))

    def outlines(self, member: int) -> np.ndarray:
        """[N, 4, 2] float corners (x, y) in canvas pixels of each patch's square, in order
        top-left, top-right, bottom-right, bottom-left of the cut-out's own frame; hidden
        patches included. From the renderer's own transforms (``sampling_matrix``,
        ``texel_size``)."""
        params = take(self._host_population().params, self._member(member))
        return patch_corners(params, self.config.collage, self._run.guidance.library.rgba.shape[1])

    def patch_at(self, member: int, x: float, y: float) -> int | None:
        """The topmost visible patch whose cut-out covers canvas point (x, y) (alpha above
        one half), or None. "opacity" mode: the highest ``order``; the additive modes have
        no stacking, so the most opaque there, then the highest slot."""
        x = edit_ops._number("patch_at", "x", x, -edit_ops.MAX_PIXELS, edit_ops.MAX_PIXELS)
        y = edit_ops._number("patch_at", "y", y, -edit_ops.MAX_PIXELS, edit_ops.MAX_PIXELS)
        top = self._topmost(member, np.array([[x, y]]))[0]
        return None if top < 0 else int(top)

    def hit_map(self, member: int | None = None) -> np.ndarray:
        """[H, W] int32: at each canvas pixel (its centre) the slot ``patch_at`` names there,
        -1 for none. What the page picks patches from under the pointer. Each patch is
        sampled only inside its outline's bounding box, so the cost grows with the patches'
        area, not patches x canvas."""
        member = self._member(member)
        height, width = self.config.collage.canvas_shape
        collage = take(self._host_population(), member)
        hidden = np.asarray(self._state.hidden)[member]
        alpha_maps = self._alpha_textures()
        corners = patch_corners(collage.params, self.config.collage, alpha_maps.shape[1])
        top = np.full((height, width), -1, np.int32)
        top_rank = np.full((height, width), -np.inf)
        opacity = self.config.collage.render_mode == "opacity"
        for slot in np.flatnonzero(~hidden):
            low = np.floor(np.nan_to_num(corners[slot].min(0), nan=0.0) - 1).astype(int)
            high = np.ceil(np.nan_to_num(corners[slot].max(0), nan=0.0) + 1).astype(int)
            x0, y0 = max(low[0], 0), max(low[1], 0)
            x1, y1 = min(high[0], width), min(high[1], height)
            if x0 >= x1 or y0 >= y1:
                continue
            rows, cols = np.mgrid[y0:y1, x0:x1]
            points = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], -1)
            alpha = _alpha_host(
                alpha_maps, collage.patch_index[slot : slot + 1], corners[slot : slot + 1], points
            )[0].reshape(rows.shape)
            rank = np.full(rows.shape, float(collage.params.order[slot])) if opacity else alpha
            # Slots in increasing order: an equal rank goes to the higher slot.
            wins = (alpha > 0.5) & (rank >= top_rank[y0:y1, x0:x1])
            top[y0:y1, x0:x1][wins] = slot
            top_rank[y0:y1, x0:x1][wins] = rank[wins]
        return top

    def _topmost(self, member: int | None, points: np.ndarray) -> np.ndarray:
        """[K] int32 slot on top at each canvas point of ``points`` [K, 2] (x, y), -1 none."""
        member = self._member(member)
        collage = take(self._host_population(), member)
        hidden = np.asarray(self._state.hidden)[member]
        alpha_maps = self._alpha_textures()
        corners = patch_corners(collage.params, self.config.collage, alpha_maps.shape[1])
        alpha = _alpha_host(alpha_maps, collage.patch_index, corners, points)  # [N, K]
        covers = (alpha > 0.5) & ~hidden[:, None]
        if self.config.collage.render_mode == "opacity":
            order = np.asarray(collage.params.order, np.float64)[:, None]
            rank = np.broadcast_to(order, alpha.shape)
        else:
            rank = alpha.astype(np.float64)
        slots = np.arange(alpha.shape[0], dtype=np.float64)[:, None]
        # The highest rank on top; among equal ranks the highest slot (as patch_at always did).
        rank = np.where(covers, rank, -np.inf)
        best = rank.max(0)
        tied = covers & (rank == best)
        top = np.where(tied, slots, -1.0).max(0)
        return top.astype(np.int32)

    def _alpha_textures(self) -> np.ndarray:
        """[L, S, S] float32 alpha of the low-res library on the host (fetched once)."""
        if self._alpha_maps is None:
            rgba = np.asarray(self._run.guidance.library.rgba[..., 3])
            self._alpha_maps = rgba.astype(np.float32) / (255.0 if rgba.dtype == np.uint8 else 1.0)
        return self._alpha_maps

    def _host_population(self) -> Collage:
        return jax.device_get(self._state.population)

    # -- edits -------------------------------------------------------------------------

    def apply(self, edit: dict) -> None:
        """Checks an edit (``edits.OPS``, or ``{"op": "undo"}`` / ``{"op": "redo"}``) and
        applies it; logged with its step, then checkpointed (with
        ``checkpoint_each_edit`` False: by the next ``save_edits``, ``save`` or chunk).

        Raises:
          ValueError: one line naming what is wrong; nothing changes.
        """
        self._do(edit, log=True)

    def set_prompt(self, prompt: str) -> None:
        """A new prompt (weights and all, as ``--prompt``); the optimiser state is kept."""
        self.apply({"op": "prompt", "prompt": prompt})

    def undo(self) -> bool:
        """Undoes the newest edit (its slots or prompt back as before it); False if none."""
        if not self._undo:
            return False
        self._do({"op": "undo"}, log=True)
        return True

    def redo(self) -> bool:
        """Makes the newest undone edit again; False if none."""
        if not self._redo:
            return False
        self._do({"op": "redo"}, log=True)
        return True

    def _do(self, edit: dict, *, log: bool) -> None:
        if isinstance(edit, dict) and edit.get("op") in ("undo", "redo"):
            if len(edit) != 1:
                raise ValueError(f"edit {edit['op']!r} takes no fields.")
            stack = self._undo if edit["op"] == "undo" else self._redo
            if not stack:
                raise ValueError(f"nothing to {edit['op']}.")
            change = stack.pop()
            if edit["op"] == "undo":
                self._revert(change)
                self._redo.append(change)
            else:
                self._undo.append(self._change(change.edit))
        else:
            checked = edit_ops.check_edit(
                edit,
                population=self.population_size,
                num_patches=self.num_patches,
                library_size=self.library_size,
            )
            self._undo.append(self._change(checked))
            del self._undo[:-MAX_UNDO]
            self._redo.clear()
            edit = checked
        if log:
            self._log.append({**edit, "step": self.step})
            write_log(self.out_dir, self._log)
            # Any checkpoint of the state from now on (this edit's, or a chunk's) holds it.
            self._files.extra_meta = {EDITS_KEY: len(self._log)}
            self._edits_unsaved = True
            if self.checkpoint_each_edit:
                self.save()

    def _change(self, edit: dict) -> _Change:
        """Applies a checked edit; returns what undo needs."""
        prompt = self.config.prompt
        if edit["op"] == "prompt":
            self._new_prompt(edit["prompt"])
            return _Change(edit, None, None, prompt)
        before = self._slots()
        after, touched = edit_ops.apply_edit(before, edit, self.config.collage)
        self._set_slots(after)
        return _Change(edit, before, touched, prompt)

    def _revert(self, change: _Change) -> None:
        if change.before is None:
            self._new_prompt(change.prompt)
        else:
            self._set_slots(edit_ops.restore(self._slots(), change.before, change.touched))

    def _slots(self) -> edit_ops.Slots:
        host = jax.device_get((self._state.population, self._state.frozen, self._state.hidden))
        return edit_ops.Slots(*host)

    def _set_slots(self, slots: edit_ops.Slots) -> None:
        """New slot values into the run state, on the same devices and shardings as before
        (so the compiled chunk is reused; all numpy, so nothing compiles). The best collage
        becomes what the edit made (the member shown as best, as drawn), unscored, so the
        next step's best replaces it."""
        state = self._state
        leader = _leader(np.asarray(state.losses))
        drawn = np.where(slots.hidden[leader], -1, slots.population.patch_index[leader])
        best = Collage(take(slots.population.params, leader), drawn)
        self._state = state._replace(
            population=jax.tree.map(_placed_like, slots.population, state.population),
            frozen=_placed_like(slots.frozen, state.frozen),
            hidden=_placed_like(slots.hidden, state.hidden),
            best=jax.tree.map(_placed_like, best, state.best),
            best_loss=_placed_like(np.float32(np.inf), state.best_loss),
        )

    def _new_prompt(self, prompt: str) -> None:
        guidance = _prompt_guidance(self._run.guidance, prompt, self._resources)
        texts = jax.tree.map(
            _placed_like,
            (guidance.text_embeddings, guidance.prompt_weights),
            (self._run.guidance.text_embeddings, self._run.guidance.prompt_weights),
        )
        guidance = self._run.guidance._replace(text_embeddings=texts[0], prompt_weights=texts[1])
        self._run = self._run._replace(guidance=guidance)
        self._set_config(dataclasses.replace(self.config, prompt=prompt))

    # -- files -------------------------------------------------------------------------

    def save(self) -> None:
        """A checkpoint of the state now (even of a step that has one: edits change it),
        recording how many log entries it holds."""
        self._files.extra_meta = {EDITS_KEY: len(self._log)}
        self._files.saved_step = -1
        checkpoint.save_checkpoint(
            self.out_dir,
            self._state,
            self._history,
            config=self.config.to_dict(),
            library_fingerprint=self._resources.library.fingerprint,
            model_fingerprint=model_fingerprint(self._resources.perceptor),
            keep=self.config.output.keep_checkpoints,
            extra_meta=self._files.extra_meta,
        )
        self._files.saved_step = self.step
        self._edits_unsaved = False

    def save_edits(self) -> None:
        """A checkpoint if an edit was made since the last one."""
        if self._edits_unsaved:
            self.save()

    def export(self, *, blend: bool = False) -> GenerateResult:
        """Writes what ``generate`` writes at the end of a run, for the best collage so far
        (after an edit: the edited best member): a checkpoint, ``params.npz``,
        ``config.json``, ``collage.png`` at the output size (blended if the config asks);
        with ``blend`` and an unblended config also ``collage-poisson.png``.

        Returns:
          The ``GenerateResult`` (``out_dir`` set).
        """
        self.save()
        _, result = self._files.save(self._state, self._history)
        if not np.isfinite(result.loss):
            # Unscored (an edit since the last step): written all the same, it is what the
            # artist sees.
            write_params(
                self.out_dir, self.config, result.collage, result.loss, self._resources.library
            )
            write_image(self.out_dir, self.config, result.image)
        if blend and self.config.blend == "none":
            blend_run(self.out_dir, EXPORT_BLEND, resources=self._resources)
        return result._replace(out_dir=self.out_dir)

    def close(self) -> None:
        """Saves; the session should not be used afterwards."""
        self.save()


# -- the edit log ----------------------------------------------------------------------


def read_log(out_dir: str) -> list[dict]:
    """The entries of ``edits.jsonl`` (none if absent). A torn last line (a crash while it
    was written by an older, appending writer) is ignored; damage elsewhere is an error."""
    path = os.path.join(out_dir, run_folder.EDITS_FILE)
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except FileNotFoundError:
        return []
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            if not isinstance(entry, dict) or not isinstance(entry.get("step"), int):
                raise ValueError("not an edit with a step")
        except ValueError as error:
            if number == len(lines):
                break
            raise ValueError(
                f"{path}: line {number} is not an edit ({error}): restore the file or remove "
                "the line."
            ) from None
        entries.append(entry)
    return entries


def write_log(out_dir: str, entries: list[dict]) -> None:
    """Writes the whole log atomically (temporary file, fsync, rename)."""
    data = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
    io.atomic_write_bytes(os.path.join(out_dir, run_folder.EDITS_FILE), data.encode())


def replay(
    config: GenerateConfig,
    entries: list[dict],
    out_dir: str | os.PathLike,
    *,
    resources: Resources | None = None,
    overwrite: bool = False,
) -> Session:
    """A new session from ``config`` with the logged ``entries`` made again at their steps
    (stopping at the last one's step): the same collage bit for bit as the session that
    logged them, on the same machine."""
    session = Session.create(config, out_dir, resources=resources, overwrite=overwrite)
    for entry in entries:
        entry = dict(entry)
        step = entry.pop("step")
        session.advance(max(0, step - session.step))
        session._do(entry, log=True)
    return session


def resume_session(
    out_dir: str | os.PathLike,
    *,
    patches=None,
    model=None,
    progress_fn: ProgressFn | None = None,
    resources: Resources | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> GenerateResult:
    """``clipclop resume`` of a session folder: open it (with its edits and masks), run to
    its ``total_steps`` and write the end-of-run files, as ``runs.generate.resume``.

    Raises:
      RunInterrupted: ``should_stop`` asked to stop (the state is checkpointed).
    """
    session = Session.open(out_dir, patches=patches, model=model, resources=resources)
    session.advance(max(0, session.total_steps - session.step), progress_fn, should_stop)
    if session.step < session.total_steps:
        session.close()
        raise RunInterrupted(
            session.step,
            session.total_steps,
            out_dir=session.out_dir,
            checkpoint=checkpoint.latest_checkpoint(session.out_dir),
        )
    result = session.export()
    session.close()
    return result


def is_session(out_dir: str | os.PathLike) -> bool:
    """Whether a run folder is a studio session's (it has an edit log)."""
    return os.path.isfile(os.path.join(os.fspath(out_dir), run_folder.EDITS_FILE))


# -- helpers ---------------------------------------------------------------------------


def _leader(losses: np.ndarray) -> int:
    fitness = np.where(np.isnan(losses), np.inf, losses)
    return int(np.argmin(fitness))


def _placed_like(value, like: jax.Array) -> jax.Array:
    """``value`` as an array on ``like``'s devices, sharding and dtype."""
    array = np.asarray(value, like.dtype)
    sharding = getattr(like, "sharding", None)
    return jax.device_put(array, sharding) if sharding is not None else jnp.asarray(array)


def _prompt_count(prompt: str) -> int:
    count = len(parse_prompts(prompt))
    if count > PROMPT_SLOTS:
        raise ValueError(
            f"the prompt has {count} parts; a studio session holds at most {PROMPT_SLOTS}: "
            "join some of them."
        )
    return count


def _prompt_guidance(guidance, prompt: str, resources: Resources):
    """``guidance`` with ``prompt`` in ``PROMPT_SLOTS`` rows (the unused ones weigh 0)."""
    _prompt_count(prompt)
    prompts = parse_prompts(prompt)
    texts = [p.text for p in prompts]
    # Always a batch of PROMPT_SLOTS texts, so embedding a new prompt compiles nothing.
    embeddings = resources.perceptor.embed_text(texts + [texts[0]] * (PROMPT_SLOTS - len(texts)))
    weights = np.zeros(PROMPT_SLOTS, np.float32)
    weights[: len(prompts)] = [p.weight for p in prompts]
    return guidance._replace(text_embeddings=embeddings, prompt_weights=jnp.asarray(weights))


def _alpha_host(alpha_maps: np.ndarray, index, corners: np.ndarray, points) -> np.ndarray:
    """[N, K] each patch's alpha at the canvas points [K, 2] (x, y), sampled as the renderer's
    ``sample_bilinear`` samples (zero off the square), in numpy: its texel map inverted from
    ``patch_corners`` [N, 4, 2]."""
    side = alpha_maps.shape[1]
    # The affine map canvas -> texel from three corners: u along TL->TR, v along TL->BL.
    across, down = corners[:, 1] - corners[:, 0], corners[:, 3] - corners[:, 0]
    basis = np.stack([across, down], -1) / side  # [N, 2, 2] texel -> canvas offset
    offset = np.asarray(points, np.float64)[None] - corners[:, None, 0]  # [N, K, 2]
    with np.errstate(all="ignore"):  # a degenerate (NaN) patch reads as outside
        texel = np.einsum("nij,nkj->nki", np.linalg.pinv(basis), offset)
    fx = np.clip(np.nan_to_num(texel[..., 0] - 0.5, nan=-1.0), -1.0, float(side))
    fy = np.clip(np.nan_to_num(texel[..., 1] - 0.5, nan=-1.0), -1.0, float(side))
    x0, y0 = np.floor(fx), np.floor(fy)
    wx, wy = fx - x0, fy - y0
    ry0 = np.where((y0 >= 0) & (y0 <= side - 1), 1.0 - wy, 0.0)
    ry1 = np.where(y0 + 1 <= side - 1, wy, 0.0)
    cx0 = np.where((x0 >= 0) & (x0 <= side - 1), 1.0 - wx, 0.0)
    cx1 = np.where(x0 + 1 <= side - 1, wx, 0.0)
    index = np.asarray(index)
    present = (index >= 0)[:, None]
    n = np.arange(len(index))[:, None]
    r0, r1 = np.clip(y0, 0, side - 1).astype(int), np.clip(y0 + 1, 0, side - 1).astype(int)
    c0, c1 = np.clip(x0, 0, side - 1).astype(int), np.clip(x0 + 1, 0, side - 1).astype(int)
    textures = alpha_maps[np.maximum(index, 0)]  # [N, S, S]
    t00, t01 = textures[n, r0, c0], textures[n, r0, c1]
    t10, t11 = textures[n, r1, c0], textures[n, r1, c1]
    alpha = ry0 * (cx0 * t00 + cx1 * t01) + ry1 * (cx0 * t10 + cx1 * t11)
    return np.where(present, alpha, 0.0)
