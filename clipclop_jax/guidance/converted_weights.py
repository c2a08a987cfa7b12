"""PyTorch CLIP checkpoints (safetensors or ``pytorch_model.bin``) as Flax weights, cached.

Most CLIP checkpoints on the Hugging Face hub (LAION's, for instance) hold only PyTorch
weights. ``flax_folder`` converts such a folder once with transformers' own converter
(``from_pt=True``) and keeps the result, ``config.json`` and ``flax_model.msgpack``, in a
cache folder named by the SHA-256 of the source's config and weight files, so a second load
reads the Flax file directly and a changed checkpoint is converted afresh.

The cache lives in ``$XDG_CACHE_HOME/clipclop_jax/flax_from_pt`` (``~/.cache`` when
``XDG_CACHE_HOME`` is unset). Each entry is written to a temporary folder and renamed into
place, so an interrupted conversion leaves no half-written entry.

Safetensors files are read without PyTorch. ``pytorch_model.bin`` needs PyTorch, and is read
with ``torch.load(weights_only=True)`` (transformers' loader): tensors only, never arbitrary
pickled objects.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import shutil
import tempfile

logger = logging.getLogger(__name__)

FLAX_WEIGHTS = "flax_model.msgpack"
# What transformers' from_pt=True loads from a folder, in its order of preference.
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
PYTORCH_BIN_INDEX = "pytorch_model.bin.index.json"
PYTORCH_WEIGHTS = (SAFETENSORS, SAFETENSORS_INDEX, PYTORCH_BIN, PYTORCH_BIN_INDEX)


class ConversionError(ValueError):
    """PyTorch weights could not be converted; the message says what to do instead."""


def cache_root() -> pathlib.Path:
    """Where converted checkpoints are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "clipclop_jax" / "flax_from_pt"


def pytorch_weight_files(folder: str | os.PathLike) -> list[pathlib.Path]:
    """The PyTorch weight files transformers would load from ``folder`` (an index file and
    its shards for a sharded checkpoint), or ``[]``."""
    folder = pathlib.Path(folder)
    for name in PYTORCH_WEIGHTS:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError):
            raise ConversionError(f"{path} is not a valid weight index file.") from None
        return [path, *(folder / shard for shard in shards)]
    return []


def source_hash(folder: str | os.PathLike, files: list[pathlib.Path]) -> str:
    """SHA-256 over the folder's ``config.json`` and the weight files (names and bytes)."""
    digest = hashlib.sha256()
    for path in [pathlib.Path(folder) / "config.json", *files]:
        digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def flax_folder(folder: str | os.PathLike, *, label: str | None = None) -> pathlib.Path | None:
    """A folder with Flax weights for the PyTorch checkpoint in ``folder``, converting it
    into the cache the first time; None when ``folder`` holds no PyTorch weights.

    ``label`` names the checkpoint in the log lines (a hub name for a hub cache folder);
    the folder's path by default.

    Raises:
      ConversionError: a file is missing or unreadable, or PyTorch is needed and missing.
    """
    files = pytorch_weight_files(folder)
    if not files:
        return None
    missing = [p for p in [pathlib.Path(folder) / "config.json", *files] if not p.is_file()]
    if missing:
        raise ConversionError(f"{folder}: {missing[0].name} is missing.")
    if files[0].name.startswith("pytorch_model"):
        try:
            import torch  # noqa: F401
        except ImportError:
            raise ConversionError(
                f"{files[0]} is a PyTorch file and reading it needs PyTorch: pip install "
                "torch (the CPU build is enough), or give the folder model.safetensors."
            ) from None
    target = cache_root() / source_hash(folder, files)
    label = label or os.fspath(folder)
    if (target / FLAX_WEIGHTS).is_file():
        logger.info("using the Flax weights converted earlier from %s (%s)", label, target)
        return target
    logger.info("converting the PyTorch weights of %s to Flax, once (cached in %s)", label, target)
    _convert(folder, target)
    return target


def _convert(folder: str | os.PathLike, target: pathlib.Path) -> None:
    from transformers import FlaxCLIPModel

    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".converting-", dir=target.parent)
    try:
        # transformers' converter needs an initialised model (_do_init=True): a one-off cost.
        model = FlaxCLIPModel.from_pretrained(os.fspath(folder), from_pt=True)
        model.save_pretrained(scratch)
        try:
            os.replace(scratch, target)
        except OSError:
            # Another process converted the same checkpoint meanwhile: keep its entry.
            if not (target / FLAX_WEIGHTS).is_file():
                raise
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise ConversionError(
            f"cannot convert the PyTorch weights of {folder} to Flax: {error}".splitlines()[0]
        ) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
