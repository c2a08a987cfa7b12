"""``RunFiles``: writes a run's checkpoints, best collage and frames at chunk ends."""

from __future__ import annotations

import os

import numpy as np

from clipclop_jax.collage.hires import render_high_res
from clipclop_jax.runs import checkpoint, processes, run_folder, video
from clipclop_jax.runs.interrupt import FinalRenderError
from clipclop_jax.runs.outputs import (
    GenerateResult,
    best_collage,
    final_image,
    write_image,
    write_params,
)
from clipclop_jax.runs.resources import model_fingerprint
from clipclop_jax.runs.setup import RunSetup
from clipclop_jax.search.optimise import (
    RunState,
)


class RunFiles:
    """Writes a run's checkpoints, best collage and frames at chunk ends."""

    def __init__(self, out_dir, config, resources, run: RunSetup, state: RunState):
        self.out_dir = out_dir
        self.config = config
        self.resources = resources
        self.run = run
        self.previous = int(state.step)
        self.saved_step = self.previous if checkpoint.latest_checkpoint(out_dir) else -1
        output = config.output
        # Every process checkpoints (each its share of the state); process 0 alone writes
        # the folder's other files.
        self.writer = processes.is_writer()
        self.frames = (output.gif or output.mp4) and self.writer
        # More for every checkpoint's meta record (a studio session's count of edits done).
        self.extra_meta: dict = {}

    def after_chunk(self, state: RunState, step: int, rows: list[np.ndarray]) -> None:
        output, previous = self.config.output, self.previous
        self.previous = step
        if self.frames and step // output.frame_every > previous // output.frame_every:
            self.save_frame(state, step)
        every = output.checkpoint_every
        if every and step // every > previous // every and step < self.config.optim.steps:
            self.save(state, np.concatenate(rows))

    def save(self, state: RunState, history: np.ndarray) -> tuple[str, GenerateResult]:
        """A checkpoint (unless this step has one), then the best collage so far.

        The checkpoint and ``params.npz`` are on disk before the final render starts, so a
        render that fails (e.g. out of memory at a huge output size) loses nothing: the
        render can be redone from them (``blend_run``, ``resume``). Before any collage has
        been scored only the checkpoint is written.

        Returns:
          The checkpoint's path and the best collage's ``GenerateResult``.
        """
        step = int(state.step)
        path = checkpoint.checkpoint_path(self.out_dir, step)
        if step != self.saved_step:
            path = checkpoint.save_checkpoint(
                self.out_dir,
                state,
                history,
                config=self.config.to_dict(),
                library_fingerprint=self.resources.library.fingerprint,
                model_fingerprint=model_fingerprint(self.resources.perceptor),
                keep=self.config.output.keep_checkpoints,
                extra_meta=self.extra_meta,
            )
            self.saved_step = step
        best, loss = best_collage(state), float(state.best_loss)
        scored = bool(np.isfinite(loss))
        if scored and self.writer:
            write_params(self.out_dir, self.config, best, loss, self.resources.library)
        try:
            image = final_image(self.config, self.resources.library, best, self.run.background_key)
        except Exception as error:
            height, width = self.config.output_shape()
            params = os.path.join(self.out_dir, run_folder.PARAMS_FILE)
            raise FinalRenderError(
                f"{width}x{height}",
                error,
                out_dir=self.out_dir,
                saved=[params, path] if scored else [path],
            ) from error
        result = GenerateResult(image, best, loss, history, None)
        if scored and self.writer:
            write_image(self.out_dir, self.config, image)
        return path, result

    def save_frame(self, state: RunState, step: int) -> None:
        """The best collage as CLIP sees it (canvas size, low-res library)."""
        height, width = self.config.collage.canvas_shape
        image = render_high_res(
            best_collage(state),
            self.resources.library.low,
            self.run.background,
            self.config.collage,
            height,
            width,
        )
        video.save_frame(os.path.join(self.out_dir, run_folder.FRAME_DIR), step, image)

    def finish_videos(self, state: RunState) -> None:
        """The last frame and the videos, once the final collage is saved."""
        output, step = self.config.output, int(state.step)
        if not self.frames:
            return
        folder = os.path.join(self.out_dir, run_folder.FRAME_DIR)
        last = video.list_frames(folder)[-1:]
        if not last or not last[0].endswith(f"step-{step:09d}.png"):
            self.save_frame(state, step)
        frames = video.list_frames(folder)
        if output.gif:
            video.write_gif(os.path.join(self.out_dir, run_folder.GIF_FILE), frames, fps=output.fps)
        if output.mp4:
            video.write_mp4(os.path.join(self.out_dir, run_folder.MP4_FILE), frames, fps=output.fps)
