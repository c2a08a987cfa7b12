"""The independent reference for CLIP embeddings: transformers' PyTorch CLIPModel."""

from __future__ import annotations

import numpy as np
import torch


def pytorch_embeddings(model, perceptor, images: np.ndarray, prompts: list[str]):
    """L2-normalised ([B, D] image, [T, D] text) embeddings of the PyTorch ``model``, fed the
    pixels normalised with ``perceptor``'s mean and std and ``perceptor``'s tokens."""
    pixels = (images - np.asarray(perceptor.mean)) / np.asarray(perceptor.std)
    ids, mask = perceptor.tokenize(prompts)
    with torch.no_grad():
        image = model.get_image_features(
            pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)).float()
        ).numpy()
        text = model.get_text_features(
            input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask)
        ).numpy()
    normalise = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    return normalise(image), normalise(text)
