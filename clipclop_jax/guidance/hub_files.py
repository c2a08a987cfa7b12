"""Only the files a CLIP checkpoint needs, fetched from a Hugging Face hub repository.

Hub repositories of CLIP checkpoints often hold the same weights several times (LAION's:
``model.safetensors``, ``pytorch_model.bin`` and open_clip's own files, about 600 MB each for
ViT-B/32). ``snapshot_folder`` fetches the config, tokenizer and preprocessor files and ONE set
of weights, in transformers' order of preference (``flax_model.msgpack``, else
``model.safetensors``, else ``pytorch_model.bin``; an index file and its shards for a sharded
checkpoint), into the Hugging Face cache (``HF_HUB_CACHE``, ``$HF_HOME/hub``), and returns the
cache's snapshot folder, which loads like any save_pretrained folder.

Offline (``HF_HUB_OFFLINE=1``, ``local_files_only=True``, or no connection to the hub) it
returns what the cache holds for the repository's main branch, without asking the hub.
"""

from __future__ import annotations

import fnmatch
import logging
import pathlib

logger = logging.getLogger(__name__)

# Everything but the weights that CLIPTokenizer, CLIPImageProcessor and FlaxCLIPModel read.
SUPPORT_FILES = (
    "config.json",
    "preprocessor_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
)
# The weights transformers' FlaxCLIPModel can read, in its order of preference: each entry is
# the file that marks the format and the patterns of all the files it needs.
WEIGHT_FORMATS = (
    ("flax_model.msgpack", ("flax_model.msgpack",)),
    ("model.safetensors", ("model.safetensors",)),
    ("model.safetensors.index.json", ("model.safetensors.index.json", "model-*-of-*.safetensors")),
    ("pytorch_model.bin", ("pytorch_model.bin",)),
    ("pytorch_model.bin.index.json", ("pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin")),
)


class HubError(ValueError):
    """The repository's files could not be had; the message is a reason, one line."""


def weight_patterns(repo_files: list[str]) -> tuple[str, ...] | None:
    """The patterns of the one set of weights to fetch from a repository holding
    ``repo_files``, or None when it has none that transformers reads."""
    names = set(repo_files)
    for marker, patterns in WEIGHT_FORMATS:
        if marker in names:
            return patterns
    return None


def snapshot_folder(repo_id: str, *, local_files_only: bool = False) -> pathlib.Path:
    """The Hugging Face cache's folder of ``repo_id`` with config, tokenizer and one set of
    weights, fetched first when missing and the hub is reachable.

    Args:
      repo_id: "owner/name" (or "name") of a model repository on the hub.
      local_files_only: never ask the hub, as with ``HF_HUB_OFFLINE=1``.

    Returns:
      The snapshot folder (its files are links into the cache's blobs).

    Raises:
      HubError: the repository is unknown, gated, has no weights transformers reads, or is
        not in the cache while offline.
    """
    from huggingface_hub import HfApi, constants, snapshot_download
    from huggingface_hub import errors as hub_errors

    offline = local_files_only or constants.HF_HUB_OFFLINE
    repo_files = None
    if not offline:
        try:
            repo_files = HfApi().list_repo_files(repo_id)
        except hub_errors.GatedRepoError:
            raise HubError(
                "it is gated: accept its terms on huggingface.co and log in with "
                "`huggingface-cli login`"
            ) from None
        except hub_errors.RepositoryNotFoundError:
            raise HubError(
                "no such repository on the hub, or it is private: check the name, or log in "
                "with `huggingface-cli login`"
            ) from None
        except hub_errors.HFValidationError as error:
            raise HubError(f"not a valid hub name: {_first_line(error)}") from None
        except (OSError, hub_errors.HfHubHTTPError, hub_errors.OfflineModeIsEnabled) as error:
            # No connection, a proxy, the hub down: use what the cache holds (below).
            logger.info("cannot reach the hub for %s (%s); using the HF cache", repo_id, error)
    try:
        if repo_files is None:
            return pathlib.Path(snapshot_download(repo_id, local_files_only=True))
        patterns = weight_patterns(repo_files)
        if patterns is None:
            raise HubError(
                "its repository has no flax_model.msgpack, model.safetensors or "
                "pytorch_model.bin; open_clip-only checkpoints are not supported"
            )
        present = [f for f in repo_files if any(fnmatch.fnmatch(f, p) for p in patterns)]
        logger.info(
            "fetching %s and the config and tokenizer of %s into the Hugging Face cache",
            ", ".join(present),
            repo_id,
        )
        folder = snapshot_download(repo_id, allow_patterns=[*SUPPORT_FILES, *patterns])
        return pathlib.Path(folder)
    except hub_errors.LocalEntryNotFoundError:
        why = (
            "downloads are turned off by HF_HUB_OFFLINE=1 or local_files_only"
            if offline
            else "the hub cannot be reached"
        )
        raise HubError(f"not in the Hugging Face cache and {why}") from None
    except hub_errors.HFValidationError as error:
        raise HubError(f"not a valid hub name: {_first_line(error)}") from None
    except (OSError, hub_errors.HfHubHTTPError) as error:
        raise HubError(f"download failed: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:160] if text else type(error).__name__
