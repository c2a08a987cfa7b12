"""Batch generation: one collage per prompt, one compiled program for all of them.

``generate_batch`` loads the CLIP model and patch library once and calls ``generate.generate`` for
each prompt with the same settings. Prompts are arguments of the compiled chunk, not
constants, so every prompt with the same number of ``|``-separated parts reuses the program
the first one compiled. A prompt that fails is recorded with its error and the batch goes on;
``summary.csv`` and ``summary.json`` are rewritten (atomically) after every prompt, so a batch
that is killed still says what it finished.

A batch splits over independent jobs with no coordinator (a SLURM array, a Kubernetes
indexed job, several Colab sessions): ``shard=Shard(i, n)`` runs every n-th prompt from the
i-th and writes its summaries as ``summary-shard-I-of-N.*``; ``merge_shards`` gathers them
into ``summary.csv``/``summary.json`` and one contact sheet. Running a batch or a shard
again skips the prompts whose runs finished and resumes those that were stopped.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
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

import numpy as np
from PIL import Image

from clipclop_jax import io
from clipclop_jax.library.contact_sheet import save_contact_sheet
from clipclop_jax.runs import checkpoint, preflight, run_folder, video
from clipclop_jax.runs.config_files import read_utf8
from clipclop_jax.runs.generate import generate, resume
from clipclop_jax.runs.resources import Resources, load_resources, with_absolute_paths
from clipclop_jax.runs.run_folder import removed_if_left_empty
from clipclop_jax.runs.settings import GenerateConfig
from clipclop_jax.version import __version__

SUMMARY_CSV = "summary.csv"
SUMMARY_JSON = "summary.json"
CONTACT_SHEET = "contact-sheet.png"
SHARD_SUMMARY = re.compile(r"summary-shard-(\d+)-of-(\d+)\.json")
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


class Shard(NamedTuple):
    """Part ``index`` of ``count`` of a batch: the prompts ``index``, ``index + count``, ...
    (counted from 0, as SLURM array and Kubernetes job indices usually are)."""

    index: int
    count: int

    @property
    def suffix(self) -> str:
        return f"-shard-{self.index}-of-{self.count}"


def parse_shard(text: str) -> Shard:
    """``"I/N"`` as a ``Shard``.

    Raises:
      ValueError: one line naming the value and the form it must take.
    """
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ValueError(
            f"--shard {text!r}: write it as I/N, part I of N counted from 0 (e.g. --shard "
            "0/4 to --shard 3/4)."
        )
    index, count = int(match.group(1)), int(match.group(2))
    if count < 1:
        raise ValueError(f"--shard {text!r}: N is the number of parts and must be at least 1.")
    if index >= count:
        raise ValueError(
            f"--shard {text!r}: I must be 0..{count - 1} (parts are counted from 0; a SLURM "
            f"array for it is --array=0-{count - 1})."
        )
    return Shard(index, count)


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
    shard: Shard | None = None,
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
      overwrite: let ``generate`` replace a prompt's folder left by an earlier batch and
        run it again. Without it, a prompt whose folder holds a finished run of the same
        settings is skipped (its result read from the folder), one whose run was stopped
        is resumed, and any other non-empty folder fails with ``generate``'s "not empty"
        error.
      shard: run only this part of the prompts (``Shard(i, n)``: those whose index is i
        modulo n), for a job array; the summaries are then ``summary-shard-I-of-N.csv`` and
        ``.json`` and ``merge_shards`` gathers them. Folders are named as in the whole batch.

    Returns:
      One ``BatchItem`` per prompt run (all, or the shard's), in order. A prompt that
      failed (a bad prompt, a full disk, ...) has ``error`` set; the others are unaffected.

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
    chosen = range(len(prompts)) if shard is None else range(shard.index, len(prompts), shard.count)
    refused = {}
    for index in chosen:
        prompt = prompts[index]
        try:
            preflight.check_prompts(prompt)
        except ValueError as error:
            refused[index] = error
    with removed_if_left_empty(out_dir):
        os.makedirs(out_dir, exist_ok=True)
        if len(refused) < len(chosen):
            resources = resources or load_resources(config)
        suffix = "" if shard is None else shard.suffix
        return _run_prompts(
            prompts, chosen, refused, config, out_dir, resources, progress_fn, overwrite, suffix
        )


def _run_prompts(
    prompts: list[str],
    chosen: Sequence[int],
    refused: dict[int, ValueError],
    config: GenerateConfig,
    out_dir: str,
    resources: Resources | None,
    progress_fn: BatchProgressFn | None,
    overwrite: bool,
    suffix: str,
) -> list[BatchItem]:
    """Runs each chosen prompt (a ``refused`` one is recorded with its error) and writes
    the summaries after each, and the contact sheet at the end."""
    items: list[BatchItem] = []
    names = folder_names(prompts)
    for index in chosen:
        prompt, folder = prompts[index], os.path.join(out_dir, names[index])
        start = time.perf_counter()
        try:
            if index in refused:
                raise refused[index]
            one = dataclasses.replace(config, prompt=prompt)
            state = None if overwrite else _earlier_run(folder, one)
            if state == "finished":  # run again: this prompt's work is done
                loss = _saved_loss(folder)
            else:
                run = (
                    functools.partial(resume, folder)
                    if state == "stopped"
                    else functools.partial(generate, one, out_dir=folder, overwrite=overwrite)
                )
                loss = run(resources=resources, progress_fn=_for_prompt(progress_fn, index)).loss
            item = BatchItem(index, prompt, folder, loss, time.perf_counter() - start)
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
        write_summary(out_dir, items, config, suffix=suffix)
    write_contact_sheet(os.path.join(out_dir, f"contact-sheet{suffix}.png"), items)
    return items


def _earlier_run(folder: str, config: GenerateConfig) -> str | None:
    """Returns "finished" or "stopped" if ``folder`` holds a run of exactly ``config`` that got to
    its last step or checkpointed before it; None otherwise (nothing there, or another run:
    ``generate`` then decides)."""
    path = checkpoint.latest_checkpoint(folder)
    if path is None:
        return None
    try:
        meta = checkpoint.read_meta(path)
        same = GenerateConfig.from_dict(meta["config"]) == with_absolute_paths(config)
    except (ValueError, KeyError, TypeError):
        return None  # resume or generate says what is wrong with it
    if not same:
        return None
    finished = meta["step"] >= config.optim.steps
    done = os.path.isfile(os.path.join(folder, run_folder.COLLAGE_FILE))
    return "finished" if finished and done else "stopped"


def _saved_loss(folder: str) -> float:
    with np.load(os.path.join(folder, run_folder.PARAMS_FILE), allow_pickle=False) as data:
        return float(data["loss"])


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


def write_summary(
    out_dir: str, items: Sequence[BatchItem], config: GenerateConfig, *, suffix: str = ""
) -> None:
    """Writes ``summary.csv`` and ``summary.json`` (``summary{suffix}.*``) for ``items``
    atomically."""
    settings = config.to_dict()
    settings.pop("prompt", None)
    _write_summaries(out_dir, items, settings, suffix)


def _write_summaries(out_dir: str, items: Sequence[BatchItem], settings: dict, suffix: str):
    rows = [_row(item) for item in items]
    text = _io.StringIO()
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    io.atomic_write_bytes(os.path.join(out_dir, f"summary{suffix}.csv"), text.getvalue().encode())
    document = {
        "version": __version__,
        "settings": settings,
        "prompts": [
            {**row, "folder": os.path.basename(item.folder)}
            | ({"traceback": item.traceback} if not item.ok else {})
            for row, item in zip(rows, items, strict=True)
        ],
    }
    data = json.dumps(document, indent=2, allow_nan=False)
    io.atomic_write_bytes(os.path.join(out_dir, f"summary{suffix}.json"), data.encode())


def write_contact_sheet(path: str, items: Sequence[BatchItem], *, cell: int = 128) -> None:
    """One PNG of the batch's collages, each captioned with its index, loss and prompt
    (nothing is written when no prompt made a collage)."""
    made = [item for item in items if item.ok and os.path.isfile(item.image)]
    if not made:
        return

    def squares():
        for item in made:
            with Image.open(item.image) as image:
                yield np.asarray(image.convert("RGBA"))

    captions = [
        f"{item.index}: {'' if item.loss is None else f'{item.loss:.4f}'}\n{item.prompt}"
        for item in made
    ]
    save_contact_sheet(path, squares(), len(made), cell=cell, captions=captions)


def merge_shards(out_dir: str | os.PathLike) -> list[BatchItem]:
    """Gathers the shards of a batch run as a job array (``generate_batch(shard=...)``) into
    ``summary.csv``, ``summary.json`` and ``contact-sheet.png``, in prompt order.

    Returns:
      Every prompt's ``BatchItem``, in order.

    Raises:
      ValueError: ``out_dir`` holds no shard summaries, shards of different splits or
        settings, or lacks some shard's summary (the message names the missing ones).
    """
    out_dir = os.fspath(out_dir)
    found = {}
    names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
    for name in names:
        if match := SHARD_SUMMARY.fullmatch(name):
            found[(int(match.group(1)), int(match.group(2)))] = name
    if not found:
        raise ValueError(
            f"{out_dir} holds no summary-shard-I-of-N.json: run the shards (clipclop batch "
            "PROMPTS --out DIR --shard I/N) before merging them."
        )
    counts = {count for _, count in found}
    if len(counts) > 1:
        raise ValueError(
            f"{out_dir} holds shards of {sorted(counts)} parts: keep the summaries of one "
            "split only."
        )
    (count,) = counts
    missing = [i for i in range(count) if (i, count) not in found]
    if missing:
        listed = ", ".join(f"{i}/{count}" for i in missing)
        raise ValueError(
            f"{out_dir} lacks the summaries of shard(s) {listed}: run them (or wait for them) "
            "before merging."
        )
    documents = []
    for key in sorted(found):
        with open(os.path.join(out_dir, found[key]), encoding="utf-8") as file:
            documents.append(json.load(file))
    settings = documents[0]["settings"]
    if any(document["settings"] != settings for document in documents):
        raise ValueError(
            f"the shards in {out_dir} ran with different settings: run every shard with the "
            "same options."
        )
    rows = sorted((row for d in documents for row in d["prompts"]), key=lambda r: r["index"])
    items = [
        BatchItem(
            row["index"],
            row["prompt"],
            os.path.join(out_dir, row["folder"]),
            float("nan") if row["status"] == "ok" and row["loss"] is None else row["loss"],
            row["seconds"],
            row["error"],
            row.get("traceback"),
        )
        for row in rows
    ]
    _write_summaries(out_dir, items, settings, "")
    write_contact_sheet(os.path.join(out_dir, CONTACT_SHEET), items)
    return items
