"""PyTorch-only CLIP folders (safetensors, pytorch_model.bin) load, converted once and cached."""

from __future__ import annotations

import logging
import shutil

import jax
import numpy as np
import pytest

from clipclop_jax.guidance import converted_weights
from clipclop_jax.guidance.perceptor import PerceptorError, demo_model_path, load_perceptor

torch = pytest.importorskip("torch")

TOKENIZER_FILES = (
    "vocab.json",
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
)


def _pytorch_folder(folder, *, safetensors: bool):
    """A small random PyTorch CLIP (the demo's shapes and tokenizer), saved as the hub does."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig.from_pretrained(str(demo_model_path()))).eval()
    model.save_pretrained(folder, safe_serialization=safetensors)
    for name in TOKENIZER_FILES:
        shutil.copy(demo_model_path() / name, folder / name)
    return model


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

    size = perceptor.image_size
    images = np.asarray(jax.random.uniform(jax.random.key(3), (2, size, size, 3)))
    pixels = (images - np.asarray(perceptor.mean)) / np.asarray(perceptor.std)
    prompts = ["a red circle", "something blue"]
    ids, mask = perceptor.tokenize(prompts)
    with torch.no_grad():
        image_ref = model.get_image_features(
            pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)).float()
        ).numpy()
        text_ref = model.get_text_features(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask)
        ).numpy()
    normalise = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    np.testing.assert_allclose(
        perceptor.embed_images(perceptor.params, images), normalise(image_ref), atol=1e-4
    )
    np.testing.assert_allclose(perceptor.embed_text(prompts), normalise(text_ref), atol=1e-4)

    # The second load reads the cache: the converter must not run again.
    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(converted_weights, "_convert", no_conversion)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clipclop_jax"):
        again = load_perceptor(str(folder))
    assert "converted earlier" in caplog.text
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
    for name in TOKENIZER_FILES:
        shutil.copy(demo_model_path() / name, tmp_path / name)
    with pytest.raises(PerceptorError, match="has no CLIP weights") as raised:
        load_perceptor(str(tmp_path))
    assert "\n" not in str(raised.value)
