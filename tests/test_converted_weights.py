"""PyTorch-only CLIP folders (safetensors, pytorch_model.bin) load, converted once and cached."""

from __future__ import annotations

import logging

import jax
import numpy as np
import pytest
from model_folders import copy_demo_tokenizer
from pytorch_reference import pytorch_embeddings

from clipclop_jax.guidance import converted_weights, hub_files
from clipclop_jax.guidance.perceptor import PerceptorError, demo_model_path, load_perceptor

torch = pytest.importorskip("torch")


def _pytorch_folder(folder, *, safetensors: bool):
    """A small random PyTorch CLIP (the demo's shapes and tokenizer), saved as the hub does."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig.from_pretrained(str(demo_model_path()))).eval()
    model.save_pretrained(folder, safe_serialization=safetensors)
    copy_demo_tokenizer(folder)
    return model


def _images(perceptor):
    size = perceptor.image_size
    return np.asarray(jax.random.uniform(jax.random.key(3), (2, size, size, 3)))


def _assert_matches_pytorch(perceptor, model):
    """Image and text embeddings equal the PyTorch model's (the independent reference)."""
    images = _images(perceptor)
    prompts = ["a red circle", "something blue"]
    image_ref, text_ref = pytorch_embeddings(model, perceptor, images, prompts)
    np.testing.assert_allclose(
        perceptor.embed_images(perceptor.params, images), image_ref, atol=1e-4
    )
    np.testing.assert_allclose(perceptor.embed_text(prompts), text_ref, atol=1e-4)


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "pytorch_bin"])
def test_pytorch_weights_load_like_the_pytorch_model_and_are_cached(
    tmp_path, monkeypatch, caplog, safetensors
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "laion-like"
    model = _pytorch_folder(folder, safetensors=safetensors)
    weights = "model.safetensors" if safetensors else "pytorch_model.bin"
    assert sorted(p.name for p in folder.glob("*model*")) == [weights]

    with caplog.at_level(logging.INFO, logger="clipclop_jax"):
        perceptor = load_perceptor(str(folder))
    assert "converting the PyTorch weights" in caplog.text
    entries = list(converted_weights.cache_root().iterdir())
    assert [e.parent for e in entries] == [tmp_path / "cache" / "clipclop_jax" / "flax_from_pt"]
    assert sorted(p.name for p in entries[0].iterdir()) == ["config.json", "flax_model.msgpack"]

    _assert_matches_pytorch(perceptor, model)

    # The second load reads the cache: the converter must not run again.
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(converted_weights, "_convert", no_conversion)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clipclop_jax"):
        again = load_perceptor(str(folder))
    assert "converted earlier" in caplog.text
    images = _images(again)
    np.testing.assert_array_equal(
        again.embed_images(again.params, images), perceptor.embed_images(perceptor.params, images)
    )
    assert sorted(p.name for p in folder.glob("*model*")) == [weights]


def test_changed_weights_are_converted_afresh(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    _pytorch_folder(folder, safetensors=True)
    first = converted_weights.flax_folder(folder)
    _pytorch_folder(folder, safetensors=True)  # same seed: same bytes, same entry
    assert converted_weights.flax_folder(folder) == first
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(folder)
    with torch.no_grad():
        model.logit_scale.add_(1.0)
    model.save_pretrained(folder, safe_serialization=True)
    second = converted_weights.flax_folder(folder)
    assert second != first and (second / "flax_model.msgpack").is_file()


def test_a_folder_without_weights_is_one_line(tmp_path):
    copy_demo_tokenizer(tmp_path)
    with pytest.raises(PerceptorError, match="has no CLIP weights") as raised:
        load_perceptor(str(tmp_path))
    assert "\n" not in str(raised.value)


# What LAION's hub repositories hold: the same weights three times (transformers' safetensors
# and pytorch_model.bin, open_clip's own) next to the config and tokenizer.
LAION_FILES = [
    ".gitattributes",
    "README.md",
    "config.json",
    "merges.txt",
    "model.safetensors",
    "open_clip_config.json",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
    "preprocessor_config.json",
    "pytorch_model.bin",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
]
REPO = "owner/tiny-clip"


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp, offline; huggingface_hub read HF_HUB_CACHE and
    HF_HUB_OFFLINE at import, so its constants are patched as well as the environment."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return cache


def _cached_repo(cache, repo_id, *, safetensors=True):
    """``repo_id`` as huggingface_hub caches it: snapshots/<commit>/files and refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = storage / "snapshots" / commit
    model = _pytorch_folder(snapshot, safetensors=safetensors)
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    return model, snapshot


def test_a_cached_hub_repo_with_pytorch_weights_only_loads_offline(hf_cache, caplog):
    model, snapshot = _cached_repo(hf_cache, REPO)
    assert not (snapshot / "flax_model.msgpack").exists()
    with caplog.at_level(logging.INFO, logger="clipclop_jax"):
        perceptor = load_perceptor(REPO)
    assert f"converting the PyTorch weights of {REPO} to Flax" in caplog.text
    assert perceptor.name == REPO
    _assert_matches_pytorch(perceptor, model)
    # The converted weights live in clipclop's cache; the HF cache is left as it was.
    assert sorted(p.name for p in snapshot.glob("*model*")) == ["model.safetensors"]


def test_local_files_only_never_asks_the_hub(hf_cache, monkeypatch):
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)

    def no_network(*args, **kwargs):
        raise AssertionError("asked the hub")

    monkeypatch.setattr(HfApi, "list_repo_files", no_network)
    _, snapshot = _cached_repo(hf_cache, REPO)
    assert hub_files.snapshot_folder(REPO, local_files_only=True) == snapshot


def test_a_hub_repo_missing_from_the_cache_is_one_line(hf_cache):
    with pytest.raises(PerceptorError) as raised:
        load_perceptor("owner/not-downloaded")
    message = str(raised.value)
    assert "\n" not in message
    assert "not in the Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert "huggingface-cli download owner/not-downloaded" in message


def test_only_the_config_tokenizer_and_one_weight_file_are_fetched(hf_cache, monkeypatch):
    """Online, from a LAION-like repository: model.safetensors, never pytorch_model.bin or
    open_clip's files (the hub is replaced by its file list and a recording download)."""
    import huggingface_hub
    from huggingface_hub import HfApi, constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(HfApi, "list_repo_files", lambda self, repo_id: LAION_FILES)
    fetched = []

    def snapshot_download(repo_id, *, allow_patterns=None, **kwargs):
        import fnmatch

        fetched.extend(f for f in LAION_FILES if any(fnmatch.fnmatch(f, p) for p in allow_patterns))
        return str(hf_cache / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert hub_files.snapshot_folder(REPO) == hf_cache / "snapshot"
    assert sorted(fetched) == [
        "config.json",
        "merges.txt",
        "model.safetensors",
        "preprocessor_config.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
    ]
    without_safetensors = [f for f in LAION_FILES if not f.endswith("safetensors")]
    assert hub_files.weight_patterns(without_safetensors) == ("pytorch_model.bin",)
    assert hub_files.weight_patterns([*LAION_FILES, "flax_model.msgpack"]) == (
        "flax_model.msgpack",
    )
    assert hub_files.weight_patterns(["open_clip_pytorch_model.bin", "config.json"]) is None
