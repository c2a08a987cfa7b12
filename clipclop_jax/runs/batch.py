"""Batch generation: one collage per prompt, one compiled program for all of them.

``generate_batch`` loads the CLIP model and patch library once and calls ``generate.generate`` for
each prompt with the same settings. Prompts are arguments of the compiled chunk, not
constants, so every prompt with the same number of ``|``-separated parts reuses the program
the first one compiled. A prompt that fails is recorded with its error and the batch goes on;
``summary.csv`` and ``summary.json`` are rewritten (atomically) after every prompt, so a batch
that is killed still says what it finished.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io as _io
import json
import math
import os
import re
import time
import traceback
import unicodedata
from collections.abc import Callable, Sequence
from typing import NamedTuple

from clipclop_jax import io
from clipclop_jax.runs import preflight, video
from clipclop_jax.runs.config_files import read_utf8
from clipclop_jax.runs.generate import generate
from clipclop_jax.runs.resources import Resources, load_resources
from clipclop_jax.runs.run_folder import removed_if_left_empty
from clipclop_jax.runs.settings import GenerateConfig
from clipclop_jax.version import __version__

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
COLLAGE_FILE = "collage.png"
CSV_COLUMNS = ("index", "prompt", "status", "loss", "image", "seconds", "error")
MAX_SLUG = 48

# progress_fn(prompt_index, step, metrics): ``generate.generate``'s callback with the
# prompt's index.
BatchProgressFn = Callable[[int, int, dict[str, float]], None]


class BatchItem(NamedTuple):
    """The outcome of one prompt of a batch.

    Attributes:
      index: the prompt's position in the batch (0-based).
      prompt: the prompt as given.
      folder: its output folder, ``out_dir/NNN-slug``.
      loss: the best collage's loss (lower is better), or None if the prompt failed. The
        summaries leave it empty where it is not finite (no step gave a finite loss).
      seconds: wall-clock time spent on it, compilation included.
      error: one line, ``"ErrorType: message"``, or None if it succeeded.
      traceback: the full traceback of a failure (kept in summary.json only).
    """

    index: int
    prompt: str
    folder: str
    loss: float | None
    seconds: float
    error: str | None = None
    traceback: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def image(self) -> str | None:
        """The collage PNG, or None if the prompt failed."""
        return os.path.join(self.folder, COLLAGE_FILE) if self.ok else None


def slugify(text: str, *, max_length: int = MAX_SLUG) -> str:
    """A folder-safe name for a prompt: ASCII lower-case letters, digits and single hyphens,
    at most ``max_length`` characters, never empty ("prompt")."""
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    if len(slug) > max_length:
        slug = slug[:max_length].rsplit("-", 1)[0] if "-" in slug[:max_length] else slug
        slug = slug[:max_length].strip("-")
    return slug or "prompt"


def folder_names(prompts: Sequence[str]) -> list[str]:
    """``NNN-slug`` for each prompt: the index prefix keeps repeated prompts apart and the
    folders in prompt order."""
    width = max(3, len(str(len(prompts) - 1)))
    return [f"{i:0{width}d}-{slugify(p)}" for i, p in enumerate(prompts)]


def read_prompts(path: str | os.PathLike) -> list[str]:
    """The prompts of a text file: one per line (UTF-8); blank lines and lines starting with
    ``#`` are skipped.

    Raises:
      OSError: the file cannot be read.
      ValueError: it is not UTF-8 text or holds no prompt.
    """
    name = os.fspath(path)
    lines = [line.strip() for line in read_utf8(name, "a prompts file").splitlines()]
    prompts = [line for line in lines if line and not line.startswith("#")]
    if not prompts:
        raise ValueError(f"{name} holds no prompts: write one prompt per line.")
    return prompts


def generate_batch(
    prompts: Sequence[str],
    config: GenerateConfig,
    out_dir: str | os.PathLike,
    *,
    resources: Resources | None = None,
    progress_fn: BatchProgressFn | None = None,
    overwrite: bool = False,
) -> list[BatchItem]:
    """Makes one collage per prompt with ``config``'s other settings.

    Prompt ``i`` runs ``generate(dataclasses.replace(config, prompt=prompts[i]))`` and
    writes into ``out_dir/NNN-slug/`` what ``generate`` writes there (``collage.png``,
    ``params.npz``, ``config.json``, checkpoints); with the same seed and settings that
    folder holds exactly what a single ``clipclop generate`` of that prompt makes.
    ``out_dir`` also gets ``summary.csv`` (columns: index, prompt, status "ok"/"error",
    loss, image, seconds, error) and ``summary.json`` (the same per prompt, plus the
    settings, the version and the traceback of each failure), rewritten atomically after
    every prompt.

    Args:
      prompts: the prompts, each a full ``"a:w | b:-w"`` spec.
      config: every other setting; its own ``prompt`` is ignored.
      out_dir: the batch's folder (created if needed).
      resources: CLIP model and patch library already loaded; default: ``load_resources``.
      progress_fn: called as ``progress_fn(index, step, metrics)`` after each compiled chunk
        of prompt ``index`` (metrics as for ``generate``).
      overwrite: let ``generate`` replace a prompt's folder left by an earlier batch (without
        it, such a prompt fails with ``generate``'s "not empty" error).

    Returns:
      One ``BatchItem`` per prompt, in order. A prompt that failed (a bad prompt, a full
      disk, ...) has ``error`` set; the others are unaffected.

    Raises:
      ValueError: no prompts, or a check every prompt shares failed before loading
        (``preflight.check_shared``: patch library, background, memory; region prompts;
        video writers), or the model or library cannot be loaded (no prompt could succeed
        then). ``out_dir`` is then removed if this call made it.
      OSError: ``out_dir`` or a summary cannot be written.
    """
    prompts = [str(p) for p in prompts]
    if not prompts:
        raise ValueError("no prompts: give at least one.")
    out_dir = os.fspath(out_dir)
    # Before the folder and the model: what every prompt shares (no prompt could succeed
    # without it), then each prompt, whose failure is its own.
    preflight.check_prompts(None, config.region_prompts)
    preflight.check_shared(config)
    video.check_video_support(gif=config.output.gif, mp4=config.output.mp4)
    refused = {}
    for index, prompt in enumerate(prompts):
        try:
            preflight.check_prompts(prompt)
        except ValueError as error:
            refused[index] = error
    with removed_if_left_empty(out_dir):
        os.makedirs(out_dir, exist_ok=True)
        if len(refused) < len(prompts):
            resources = resources or load_resources(config)
        return _run_prompts(prompts, refused, config, out_dir, resources, progress_fn, overwrite)


def _run_prompts(
    prompts: list[str],
    refused: dict[int, ValueError],
    config: GenerateConfig,
    out_dir: str,
    resources: Resources | None,
    progress_fn: BatchProgressFn | None,
    overwrite: bool,
) -> list[BatchItem]:
    """Runs each prompt (a ``refused`` one is recorded with its error) and writes the
    summaries after each."""
    items: list[BatchItem] = []
    for index, (prompt, name) in enumerate(zip(prompts, folder_names(prompts), strict=True)):
        folder = os.path.join(out_dir, name)
        start = time.perf_counter()
        try:
            if index in refused:
                raise refused[index]
            result = generate(
                dataclasses.replace(config, prompt=prompt),
                out_dir=folder,
                resources=resources,
                progress_fn=_for_prompt(progress_fn, index),
                overwrite=overwrite,
            )
            item = BatchItem(index, prompt, folder, result.loss, time.perf_counter() - start)
        except Exception as error:  # One prompt's failure must not lose the others.
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # only if the failure left it empty
            item = BatchItem(
                index,
                prompt,
                folder,
                None,
                time.perf_counter() - start,
                error=_one_line(error),
                traceback="".join(traceback.format_exception(error)),
            )
        items.append(item)
        write_summary(out_dir, items, config)
    return items


def _for_prompt(progress_fn: BatchProgressFn | None, index: int):
    if progress_fn is None:
        return None
    return lambda step, metrics: progress_fn(index, step, metrics)


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    message = text.splitlines()[0] if text else repr(error)
    return f"{type(error).__name__}: {message}"


def _row(item: BatchItem) -> dict:
    finite = item.loss is not None and math.isfinite(item.loss)
    return {
        "index": item.index,
        "prompt": item.prompt,
        "status": "ok" if item.ok else "error",
        "loss": item.loss if finite else None,
        "image": item.image,
        "seconds": round(item.seconds, 3),
        "error": item.error,
    }


def write_summary(out_dir: str, items: Sequence[BatchItem], config: GenerateConfig) -> None:
    """Writes ``summary.csv`` and ``summary.json`` for ``items`` atomically."""
    rows = [_row(item) for item in items]
    text = _io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    io.atomic_write_bytes(os.path.join(out_dir, SUMMARY_CSV), text.getvalue().encode())
    settings = config.to_dict()
    settings.pop("prompt", None)
    document = {
        "version": __version__,
        "settings": settings,
        "prompts": [
            {**row, "traceback": item.traceback} if not item.ok else row
            for row, item in zip(rows, items, strict=True)
        ],
    }
    data = json.dumps(document, indent=2, allow_nan=False)
    io.atomic_write_bytes(os.path.join(out_dir, SUMMARY_JSON), data.encode())
