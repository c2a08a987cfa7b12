"""CLIP behind one small interface: the bundled demo model, a hub name or a local folder.

A ``Perceptor`` wraps a ``transformers.FlaxCLIPModel``, its ``CLIPTokenizer`` and its image
normalisation. Text is embedded once per run on the host side; images are embedded inside
the jitted optimisation step by ``embed_images``, a pure function of the CLIP weights passed
in as an argument (never closed over), so changing prompts or weights of the same shapes
does not recompile and gradients flow back to the pixels.

Three sources (``load_perceptor``):

* ``"demo"``: a small CLIP trained on procedural shapes (``tools/train_demo_clip.py``),
  bundled with the package; works offline, on CPU, in seconds. See docs/demo_model.md.
* a Hugging Face hub name such as ``openai/clip-vit-base-patch32`` or
  ``laion/CLIP-ViT-B-32-laion2B-s34B-b79K``: the config, tokenizer and one set of weights are
  fetched into the HF cache on first use where there is internet (``hub_files``), and read
  from it offline (``HF_HUB_OFFLINE=1``).
* a local folder written by ``FlaxCLIPModel.save_pretrained`` and
  ``CLIPTokenizer.save_pretrained`` (plus, optionally, ``CLIPImageProcessor``).

A folder or hub repository with PyTorch weights only (``model.safetensors`` or
``pytorch_model.bin``, as most hub checkpoints) is converted to Flax once and cached
(``converted_weights``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.resources
import logging
import os
import pathlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np

from clipclop_jax.guidance import converted_weights, hub_files

DEMO = "demo"
# OpenAI CLIP's normalisation, used when a checkpoint has no preprocessor config.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class PerceptorError(ValueError):
    """A CLIP model could not be loaded; the message says what to do instead."""


class PromptError(ValueError):
    """A prompt is longer than the text encoder takes."""


def demo_model_path() -> pathlib.Path:
    """Folder of the bundled demo CLIP (a ``save_pretrained`` folder inside the package)."""
    return pathlib.Path(str(importlib.resources.files("clipclop_jax") / "assets" / "demo_clip"))


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silences transformers' Flax deprecation notices and load-time chatter, only inside.

    transformers 4.57 logs "TensorFlow and JAX classes are deprecated..." whenever a Flax
    model is built, warns that float16 checkpoints should be upcast (we do) and emits
    FutureWarnings; none is actionable for our users.
    """
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*TensorFlow and JAX classes are deprecated")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)


def _normalise(v: jax.Array) -> jax.Array:
    # The tiny epsilon keeps the gradient finite for an all-zero vector; it does not move
    # real embeddings (norms ~1-10) in float32.
    return v / jnp.sqrt(jnp.sum(v * v, axis=-1, keepdims=True) + 1e-20)


@dataclasses.dataclass(frozen=True, eq=False)
class Perceptor:
    """A CLIP model: text and image embedding into one L2-normalised space.

    Attributes:
      name: what it was loaded from ("demo", a hub name or a folder).
      image_size: side in pixels of the vision tower's square input.
      mean, std: per-channel RGB normalisation applied to [0, 1] pixels (unless
        ``embed_images`` is told not to: ``OptimConfig.normalize_input``).
      params: the CLIP weights pytree; pass it into jitted code as an argument.
      embed_dim: D, the joint embedding size.
      max_text_tokens: the most tokens a prompt may have, start and end tokens included
        (77 for OpenAI CLIP).
    """

    name: str
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    params: Any = dataclasses.field(repr=False)
    embed_dim: int
    max_text_tokens: int
    module: Any = dataclasses.field(repr=False)  # the stateless flax FlaxCLIPModule
    tokenizer: Any = dataclasses.field(repr=False)  # transformers.CLIPTokenizer
    pad_token_id: int = 0
    # jax.jit(text tower)(params, ids, mask), compiled once per prompt count.
    _text_fn: Any = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self._text_fn is None:
            fn = jax.jit(functools.partial(_text_features, self.module))
            object.__setattr__(self, "_text_fn", fn)

    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """Writes weights (float32), tokenizer and normalisation as a save_pretrained folder.

        ``load_perceptor(folder)`` gives back the same embeddings; use it to copy a hub model
        to a machine without internet.
        """
        from transformers import CLIPImageProcessor, FlaxCLIPModel

        size = self.image_size
        with _quiet_transformers():
            model = FlaxCLIPModel(self.module.config, dtype=self.module.dtype, _do_init=False)
            model.save_pretrained(folder, params=self.params)
            self.tokenizer.save_pretrained(folder)
            CLIPImageProcessor(
                size={"shortest_edge": size},
                crop_size={"height": size, "width": size},
                image_mean=list(self.mean),
                image_std=list(self.std),
            ).save_pretrained(folder)

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and attention mask, each [T, max_text_tokens] int32.

        Raises:
          PromptError: a prompt has more than ``max_text_tokens`` tokens.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("embed_text needs at least one prompt.")
        ids = np.full((len(texts), self.max_text_tokens), self.pad_token_id, np.int32)
        mask = np.zeros((len(texts), self.max_text_tokens), np.int32)
        for i, text in enumerate(texts):
            with _quiet_transformers():
                tokens = self.tokenizer(text)["input_ids"]
            if len(tokens) > self.max_text_tokens:
                shown = text if len(text) <= 60 else text[:57] + "..."
                # Numbered from 1, as in every prompt message.
                raise PromptError(
                    f"prompt {i + 1} ({shown!r}) is {len(tokens)} tokens long but {self.name} "
                    f"takes at most {self.max_text_tokens}: shorten it."
                )
            ids[i, : len(tokens)] = tokens
            mask[i, : len(tokens)] = 1
        return ids, mask

    def embed_text(self, texts: Sequence[str]) -> jax.Array:
        """Embeds prompts (once per run).

        Args:
          texts: T prompts, any text (the tokenizer is byte-level).

        Returns:
          [T, D] float32, L2-normalised rows.

        Raises:
          PromptError: a prompt is too long for the text encoder.
        """
        ids, mask = self.tokenize(texts)
        return self._text_fn(self.params, jnp.asarray(ids), jnp.asarray(mask))

    def embed_images(
        self, params: Any, images: jax.Array, *, normalize: bool = True, dtype: Any = None
    ) -> jax.Array:
        """Embeds images; pure in ``params`` and differentiable in ``images``.

        Images are resized (antialiased, aspect not kept: crop first to keep it) to
        ``image_size``, normalised with ``mean``/``std`` (unless ``normalize`` is False) and
        run through the vision tower and projection. Only the ``params`` argument is read, so
        ``jax.jit(lambda p, x: perceptor.embed_images(p, x))`` compiles once per image shape.

        Args:
          params: the CLIP weights, ``perceptor.params`` (or a same-shaped pytree).
          images: [B, H, W, 3] float32 RGB in [0, 1], any H, W.
          normalize: False feeds the [0, 1] pixels to the vision tower as they are, as the
            original CLIP-CLOP did by default (``use_normalized_clip: False``); a static
            setting (``OptimConfig.normalize_input``).
          dtype: the vision tower's weights and arithmetic (None: the loaded model's, float32
            by default). bfloat16 (``OptimConfig.precision``) casts the weights and the
            normalised pixels to it inside the program (a no-op for weights already in it);
            gradients reach the float32 pixels through the cast.

        Returns:
          [B, D] float32, L2-normalised rows.
        """
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images have shape {images.shape}; expected [B, H, W, 3].")
        size = self.image_size
        batch = images.shape[0]
        images = images.astype(jnp.float32)
        if images.shape[1:3] != (size, size):
            images = jax.image.resize(images, (batch, size, size, 3), "linear", antialias=True)
        pixels = images
        if normalize:
            mean = jnp.asarray(self.mean, jnp.float32).reshape(1, 1, 1, 3)
            std = jnp.asarray(self.std, jnp.float32).reshape(1, 1, 1, 3)
            pixels = (images - mean) / std
        module = self.module
        if dtype is not None and jnp.dtype(dtype) != jnp.dtype(module.dtype):
            module = module.clone(dtype=jnp.dtype(dtype))
            params = cast_floats(params, dtype)
            pixels = pixels.astype(dtype)
        with flax.linen.intercept_methods(_patch_conv_as_matmul):
            features = module.apply({"params": params}, pixels, method=_image_method)
        return _normalise(features.astype(jnp.float32))


def cast_floats(tree: Any, dtype: Any) -> Any:
    """``tree`` with its floating-point leaves in ``dtype`` (integer leaves as they are)."""

    def cast(leaf):
        if leaf.dtype == dtype or not jnp.issubdtype(leaf.dtype, jnp.floating):
            return leaf
        return leaf.astype(dtype)

    return jax.tree.map(cast, tree)


def _image_method(module: Any, pixels: jax.Array) -> jax.Array:
    # NHWC straight into the vision tower: FlaxCLIPModel.get_image_features would expect
    # NCHW and transpose back.
    pooled = module.vision_model(pixel_values=pixels, deterministic=True)[1]
    return module.visual_projection(pooled)


def _patch_conv_as_matmul(next_fun, args, kwargs, context):
    """Runs the vision tower's patch embedding (a convolution whose stride is its kernel,
    no padding) as the matrix product it is: patches of the image times the kernel.

    Why: XLA:CPU's convolution may split its sums across the device's intra-op threads,
    and gave other bits in processes with 1 and with 8 simulated devices; with the matrix
    product (and ``xla_options``' device-count-invariant options) the same seed gives the
    same collage in any process (docs/devices.md). It is the same arithmetic up to
    rounding.
    """
    module = context.module

    def pair(value):
        return tuple(value) if isinstance(value, (tuple, list)) else (value, value)

    if not (
        isinstance(module, flax.linen.Conv)
        and context.method_name == "__call__"
        and len(module.kernel_size) == 2
        and pair(module.strides) == tuple(module.kernel_size)
        and pair(module.kernel_dilation or 1) == pair(module.input_dilation or 1) == (1, 1)
        and module.padding == "VALID"
        and module.feature_group_count == 1
        and not kwargs
        and args[0].ndim == 4
    ):
        return next_fun(*args, **kwargs)
    x = args[0]
    (p, q), (batch, height, width, channels) = module.kernel_size, x.shape
    rows, cols = height // p, width // q
    patches = x[:, : rows * p, : cols * q].reshape(batch, rows, p, cols, q, channels)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(batch, rows, cols, p * q * channels)
    params = module.variables["params"]
    out = patches @ params["kernel"].reshape(p * q * channels, -1).astype(x.dtype)
    if module.use_bias:
        out = out + params["bias"].reshape(1, 1, 1, -1)
    return out


def _text_method(module: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
    pooled = module.text_model(
        input_ids=ids, attention_mask=mask, position_ids=positions, deterministic=True
    )[1]
    return module.text_projection(pooled)


def _text_features(module: Any, params: Any, ids: jax.Array, mask: jax.Array) -> jax.Array:
    features = module.apply({"params": params}, ids, mask, method=_text_method)
    return _normalise(features.astype(jnp.float32))


def _hub_error(name: str, reason: str) -> PerceptorError:
    return PerceptorError(
        f"Cannot load CLIP {name!r} ({reason}). Download it where there is internet "
        f"(`huggingface-cli download {name}`) into the HF cache (HF_HOME), or copy a "
        "save_pretrained folder and pass its path, or use --model demo."
    )


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:160] if text else type(error).__name__


def _require_ftfy() -> None:
    """CLIP's tokenizer cleans text with ``ftfy.fix_text``; transformers silently falls back
    to another cleaner without it, which tokenises Chinese, Japanese, control characters and
    mis-decoded text differently (other embeddings than the model was trained on)."""
    try:
        import ftfy  # noqa: F401
    except ImportError:
        raise PerceptorError(
            "the Python package ftfy is missing; CLIP's tokenizer needs it: pip install ftfy."
        ) from None


def load_perceptor(
    name_or_path: str = DEMO, *, dtype: Any = jnp.float32, local_files_only: bool = False
) -> Perceptor:
    """Loads a CLIP model as a ``Perceptor``.

    Args:
      name_or_path: "demo" (the bundled model), a Hugging Face hub name
        ("openai/clip-vit-base-patch32", "laion/CLIP-ViT-B-32-laion2B-s34B-b79K", ...) or a
        local save_pretrained folder with a CLIP tokenizer and Flax weights
        (flax_model.msgpack) or PyTorch weights (model.safetensors or pytorch_model.bin).
        From a hub repository only the config, tokenizer and preprocessor files and one
        set of weights (Flax, else safetensors, else pytorch_model.bin) are fetched, into
        the Hugging Face cache (``hub_files``). PyTorch weights are converted to Flax once
        and cached (``converted_weights``); a line is logged to the ``clipclop_jax``
        logger while it fetches or converts.
      dtype: computation dtype of the towers (float32; bfloat16 on accelerators). The
        weights are stored float32 either way and the embeddings are float32.
      local_files_only: never ask the hub, use what the Hugging Face cache holds (as
        ``HF_HUB_OFFLINE=1`` does).

    Returns:
      The perceptor.

    Raises:
      PerceptorError: the model cannot be found or loaded (one line, with what to do).
    """
    from transformers import CLIPImageProcessor, CLIPTokenizer, FlaxCLIPModel

    _require_ftfy()
    is_demo = name_or_path == DEMO
    source = str(demo_model_path()) if is_demo else os.fspath(name_or_path)
    is_folder = os.path.isdir(source)
    # Hub names are "owner/model" or "model"; anything else is a folder that is missing.
    looks_like_path = source.startswith((".", "/", "~")) or source.count("/") > 1
    if not is_folder and (looks_like_path or os.path.exists(source)):
        raise PerceptorError(
            f"CLIP model folder {source!r} does not exist or is not a folder; pass a "
            "save_pretrained folder, a hub name such as openai/clip-vit-base-patch32, or demo."
        )
    folder = source
    if not is_folder:
        try:
            folder = os.fspath(hub_files.snapshot_folder(source, local_files_only=local_files_only))
        except hub_files.HubError as error:
            raise _hub_error(source, str(error)) from None
    weights = folder
    if not os.path.exists(os.path.join(folder, converted_weights.FLAX_WEIGHTS)):
        with _quiet_transformers():
            try:
                converted = converted_weights.flax_folder(folder, label=source)
            except converted_weights.ConversionError as error:
                raise PerceptorError(str(error)) from None
        if converted is None and not is_folder:
            raise _hub_error(
                source,
                "the Hugging Face cache holds no flax_model.msgpack, model.safetensors or "
                "pytorch_model.bin for it",
            )
        if converted is None:
            raise PerceptorError(
                f"{source!r} has no CLIP weights (flax_model.msgpack, model.safetensors or "
                "pytorch_model.bin): pass a save_pretrained folder."
            )
        weights = os.fspath(converted)
    with _quiet_transformers():
        try:
            # _do_init=False skips a random initialisation of every weight (seconds for
            # ViT-B) that the checkpoint would overwrite anyway.
            model, params = FlaxCLIPModel.from_pretrained(weights, _do_init=False, dtype=dtype)
            tokenizer = CLIPTokenizer.from_pretrained(folder)
        except (OSError, ValueError) as error:
            if is_folder:
                raise PerceptorError(
                    f"Cannot load CLIP from folder {source!r}: {_first_line(error)}"
                ) from None
            raise _hub_error(source, _first_line(error)) from None
        try:
            processor = CLIPImageProcessor.from_pretrained(folder)
            mean, std = tuple(processor.image_mean), tuple(processor.image_std)
        except (OSError, ValueError):
            mean, std = OPENAI_MEAN, OPENAI_STD
    if getattr(tokenizer, "fix_text", None) is None:
        raise PerceptorError(f"the tokenizer of {source!r} does not clean text with ftfy.")
    # Checkpoints may hold float16 (the demo does, to stay small): compute from float32.
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    config = model.config
    return Perceptor(
        name=DEMO if is_demo else source,
        image_size=int(config.vision_config.image_size),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        params=params,
        embed_dim=int(config.projection_dim),
        max_text_tokens=int(config.text_config.max_position_embeddings),
        module=model.module,
        tokenizer=tokenizer,
        pad_token_id=int(
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ),
    )
