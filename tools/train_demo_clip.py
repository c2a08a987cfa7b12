"""Trains the bundled demo CLIP on procedural captioned shapes and saves it with save_pretrained.

A small but real ``transformers.FlaxCLIPModel`` (ViT on 64 px images, a 3-layer text
transformer, a byte-level BPE tokenizer from ``make_demo_tokenizer.py``) is trained
contrastively with optax on images from ``clipclop_jax.guidance.demo_data``, drawn on the fly.
Because one caption can be true of many images in a batch ("red" of every red scene), the
loss is CLIP's symmetric cross-entropy with *every* true caption/image as a positive (the
targets are uniform over the positives) instead of only the diagonal.

Everything is seeded; the same command gives the same weights on the same software.
docs/demo_model.md records the command, time and accuracy of the bundled model.

Usage (about 29 minutes on 2 CPU cores; the defaults are the bundled model's recipe):
  python tools/train_demo_clip.py --out clipclop_jax/assets/demo_clip
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from make_demo_tokenizer import write_tokenizer  # noqa: E402

from clipclop_jax.guidance.demo_data.captions import (  # noqa: E402
    COLOUR_NAMES,
    caption_matches,
    label_targets,
)
from clipclop_jax.guidance.demo_data.drawing import SHAPES, draw  # noqa: E402
from clipclop_jax.guidance.demo_data.scenes import sample_batch  # noqa: E402
from clipclop_jax.guidance.demo_data.zero_shot import zero_shot_accuracy  # noqa: E402

# OpenAI CLIP's normalisation; the demo model is trained with it so every model shares it.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_LENGTH = 24  # longest generated caption is 20 tokens with BOS/EOS
# Probabilities of single, pair and group scenes in each phase.
PRETRAIN_KINDS = (1.0, 0.0, 0.0)
CLIP_KINDS = (0.35, 0.25, 0.4)


def model_config(vocab: dict[str, int], args: argparse.Namespace):
    from transformers import CLIPConfig

    eos = vocab[demo_data_eos()]
    return CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": args.text_width,
            "intermediate_size": 4 * args.text_width,
            "num_hidden_layers": args.text_layers,
            "num_attention_heads": args.text_width // 32,
            "max_position_embeddings": 77,
            "bos_token_id": eos - 1,
            "eos_token_id": eos,
            "pad_token_id": eos,
        },
        vision_config={
            "image_size": args.image_size,
            "patch_size": args.patch_size,
            "hidden_size": args.vision_width,
            "intermediate_size": 4 * args.vision_width,
            "num_hidden_layers": args.vision_layers,
            "num_attention_heads": args.vision_width // 32,
        },
        projection_dim=args.projection_dim,
    )


def demo_data_eos() -> str:
    return "<|endoftext|>"


def multi_positive_clip_loss(image_embeds, text_embeds, logit_scale, matches):
    """Symmetric InfoNCE where every true (image, caption) pair counts as a positive.

    Args:
      image_embeds: [B, D] L2-normalised.
      text_embeds: [B, D] L2-normalised.
      logit_scale: scalar, log of the inverse temperature.
      matches: [B, B] float32, 1 where caption j is true of image i (diagonal included).
    """
    logits = jnp.exp(logit_scale) * image_embeds @ text_embeds.T
    per_image = matches / jnp.sum(matches, axis=1, keepdims=True)
    per_text = matches.T / jnp.sum(matches.T, axis=1, keepdims=True)
    image_loss = -jnp.sum(per_image * jax.nn.log_softmax(logits, axis=1), axis=1)
    text_loss = -jnp.sum(per_text * jax.nn.log_softmax(logits.T, axis=1), axis=1)
    return 0.5 * (jnp.mean(image_loss) + jnp.mean(text_loss))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--vision-width", type=int, default=96)
    parser.add_argument("--vision-layers", type=int, default=4)
    parser.add_argument("--text-width", type=int, default=96)
    parser.add_argument("--text-layers", type=int, default=3)
    parser.add_argument("--projection-dim", type=int, default=128)
    parser.add_argument("--class-weight", type=float, default=2.0)
    parser.add_argument("--probe-weight", type=float, default=1.0)
    parser.add_argument("--pretrain-steps", type=int, default=2400)
    parser.add_argument("--evaluate-every", type=int, default=500)
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--benchmark", type=int, default=0, help="time N steps, save nothing")
    parser.add_argument(
        "--init",
        type=pathlib.Path,
        default=None,
        help="continue from a model this script saved (its save_pretrained folder): skips "
        "nothing by itself; pass --pretrain-steps 0 to go straight to the contrastive phase",
    )
    args = parser.parse_args()

    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers import CLIPImageProcessor, CLIPTokenizer, FlaxCLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    start = time.time()
    out = args.out
    vocab = write_tokenizer(out)
    tokenizer = CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"))
    config = model_config(vocab, args)
    model = FlaxCLIPModel(config, seed=args.seed, dtype=jnp.float32)
    params = model.params
    module = model.module
    mean, std = jnp.asarray(MEAN), jnp.asarray(STD)
    num_params = sum(x.size for x in jax.tree.leaves(params))
    print(f"{num_params / 1e6:.2f} M parameters", flush=True)

    # Linear probes on the (unnormalised) image embedding, trained with the model and then
    # discarded. Their dense per-image gradients teach the small ViT shapes far faster than
    # the contrastive terms: trained contrastively from scratch, shape stayed near chance
    # for ~1000 steps and reached only ~30% zero-shot after 2500.
    head_keys = jax.random.split(jax.random.key(args.seed + 1), 2)
    dim = args.vision_width  # probes read the pooled vision output, before the projection
    heads = {
        name: {
            "kernel": jax.random.normal(key, (dim, n)) * dim**-0.5,
            "bias": jnp.zeros((n,)),
        }
        for key, (name, n) in zip(
            head_keys,
            (("colour", len(COLOUR_NAMES)), ("shape", len(SHAPES))),
            strict=True,
        )
    }

    def make_optimizer(params, steps, *, clip_norm):
        schedule = optax.warmup_cosine_decay_schedule(
            0.0, args.lr, args.warmup, max(steps, args.warmup + 1), end_value=args.lr * 0.02
        )
        # No weight decay on gains, biases or the temperature.
        decay_mask = jax.tree.map(lambda x: x.ndim >= 2, params)
        adamw = optax.adamw(schedule, b2=0.98, weight_decay=0.05, mask=decay_mask)
        if clip_norm:  # the contrastive phase; clipping slowed the probe-only phase
            return optax.chain(optax.clip_by_global_norm(clip_norm), adamw)
        return adamw

    def embed(p, images, ids, mask):
        pixels = (images - mean) / std
        pooled = module.apply(
            {"params": p},
            pixels,
            method=lambda m, x: m.vision_model(x)[1],
        )
        image = module.apply({"params": p}, pooled, method=lambda m, x: m.visual_projection(x))
        text = module.apply(
            {"params": p},
            ids,
            mask,
            method=lambda m, i, a: m.text_projection(
                m.text_model(
                    input_ids=i,
                    attention_mask=a,
                    position_ids=jnp.broadcast_to(jnp.arange(i.shape[1]), i.shape),
                )[1]
            ),
        )
        normalise = lambda v: v / jnp.linalg.norm(v, axis=-1, keepdims=True)
        return normalise(image), normalise(text), pooled

    token_cache: dict[str, list[int]] = {}

    def tokens(captions):
        ids = np.full((len(captions), TEXT_LENGTH), tokenizer.eos_token_id, np.int32)
        mask = np.zeros((len(captions), TEXT_LENGTH), np.int32)
        for i, caption in enumerate(captions):
            if caption not in token_cache:
                token_cache[caption] = tokenizer(caption)["input_ids"]
            row = token_cache[caption][:TEXT_LENGTH]
            ids[i, : len(row)] = row
            mask[i, : len(row)] = 1
        return ids, mask

    # Class prompts: every image is also scored against all colours and all shapes, a dense
    # signal with guaranteed hard negatives (in-batch captions rarely differ in shape only).
    colour_prompts = [f"something {c}" for c in COLOUR_NAMES]
    shape_prompts = [f"a {s}" for s in SHAPES]
    class_ids, class_mask = tokens(colour_prompts + shape_prompts)
    num_colours = len(colour_prompts)

    def cross_entropy(targets, logits):
        """Mean soft-target cross-entropy over the images whose targets are known."""
        per_image = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=1), axis=1)
        return jnp.sum(per_image) / jnp.maximum(jnp.sum(targets), 1.0)

    def probe_loss(heads, features, colour_targets, shape_targets, *, colour=True):
        probe = lambda h: features @ h["kernel"] + h["bias"]
        shape_logits = probe(heads["shape"])
        loss = cross_entropy(shape_targets, shape_logits)
        if colour:
            loss = loss + cross_entropy(colour_targets, probe(heads["colour"]))
        known = jnp.sum(shape_targets, axis=1)
        hits = jnp.sum(shape_targets * jax.nn.one_hot(jnp.argmax(shape_logits, 1), 7), axis=1)
        return loss, jnp.sum(hits) / jnp.maximum(jnp.sum(known), 1.0)

    def pretrain_loss(p, scenes, ids, mask, matches, colour_targets, shape_targets):
        """Phase 1: the vision tower alone, taught shapes by the shape probe.

        Only shapes: adding the colour probe (or a projection, or gradient clipping) slowed
        shape learning by half in short trials.
        """
        images = draw(scenes, args.image_size)
        pixels = (images - mean) / std
        features = module.apply(
            # FlaxCLIPModule.setup declares logit_scale, so it must be present.
            {"params": {**p["vision"], "logit_scale": jnp.zeros(())}},
            pixels,
            method=lambda m, x: m.vision_model(x)[1],
        )
        return probe_loss(p["heads"], features, colour_targets, shape_targets, colour=False)

    def loss_fn(p, scenes, ids, mask, matches, colour_targets, shape_targets):
        """Phase 2: contrastive + class prompts + probes, every weight."""
        images = draw(scenes, args.image_size)
        all_ids = jnp.concatenate([ids, class_ids])
        all_mask = jnp.concatenate([mask, class_mask])
        image_embeds, text_embeds, features = embed(p["clip"], images, all_ids, all_mask)
        batch = ids.shape[0]
        scale = p["clip"]["logit_scale"]
        contrastive = multi_positive_clip_loss(image_embeds, text_embeds[:batch], scale, matches)
        logits = jnp.exp(scale) * image_embeds @ text_embeds[batch:].T
        prompts = cross_entropy(colour_targets, logits[:, :num_colours]) + cross_entropy(
            shape_targets, logits[:, num_colours:]
        )
        probes, probe_accuracy = probe_loss(p["heads"], features, colour_targets, shape_targets)
        loss = contrastive + args.class_weight * prompts + args.probe_weight * probes
        return loss, probe_accuracy

    def make_step(loss, optimizer):
        @jax.jit
        def step(p, state, *batch):
            (value, probe_accuracy), grads = jax.value_and_grad(loss, has_aux=True)(p, *batch)
            updates, state = optimizer.update(grads, state, p)
            p = optax.apply_updates(p, updates)
            if "clip" in p:  # CLIP clamps the temperature at 100.
                clip = p["clip"]
                scale = jnp.minimum(clip["logit_scale"], jnp.log(100.0))
                p = {**p, "clip": {**clip, "logit_scale": scale}}
            return p, state, value, probe_accuracy

        return step

    def host_batch(rng, kinds):
        batch = sample_batch(rng, args.batch_size, kinds=kinds)
        ids, mask = tokens(batch.captions)
        matches = caption_matches(batch.labels, batch.mentioned).astype(np.float32)
        colour_targets, shape_targets = label_targets(batch.labels)
        return batch.scenes, ids, mask, matches, colour_targets, shape_targets

    # Held-out check during training (the test uses its own, different seed).
    eval_batch = sample_batch(np.random.default_rng(10_000 + args.seed), 512, kinds=(1.0, 0.0, 0.0))
    eval_images = jax.jit(draw, static_argnums=1)(eval_batch.scenes, args.image_size)

    def evaluate(train_params):
        p = train_params["clip"]

        def embed_images(images):
            return embed(p, images, jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), jnp.int32))[0]

        def embed_texts(texts):
            ids, mask = tokens(texts)
            return embed(p, jnp.zeros((1, args.image_size, args.image_size, 3)), ids, mask)[1]

        return zero_shot_accuracy(embed_images(eval_images), eval_batch, embed_texts)

    def run(phase, params, loss, steps, *, kinds, clip_norm, evaluate_every=0):
        """Runs ``steps`` optimiser steps of one phase; returns the trained params."""
        optimizer = make_optimizer(params, steps, clip_norm=clip_norm)
        step_fn = make_step(loss, optimizer)
        opt_state = optimizer.init(params)
        host = host_batch(rng, kinds)
        t0, losses, hits = time.time(), [], []
        for step in range(1, steps + 1):
            params, opt_state, value, probe_accuracy = step_fn(params, opt_state, *host)
            host = host_batch(rng, kinds)  # sampled on the host while the step runs
            losses.append(value)
            hits.append(probe_accuracy)
            if step == 1:
                jax.block_until_ready(value)
                t0 = time.time()
                print(f"{phase}: compiled at {t0 - start:.1f} s", flush=True)
            if step % args.log_every == 0 or step == steps:
                mean_loss = float(jnp.mean(jnp.stack(losses)))
                probe = float(jnp.mean(jnp.stack(hits)))
                losses, hits = [], []
                rate = (time.time() - t0) / max(step - 1, 1)
                msg = (
                    f"{phase} {step} loss {mean_loss:.3f} probe shape {probe:.3f} {rate:.3f} s/step"
                )
                if evaluate_every and (step % evaluate_every == 0 or step == steps):
                    acc = evaluate(params)
                    msg += f" | zero-shot colour {acc['colour']:.3f} shape {acc['shape']:.3f}"
                print(msg, flush=True)
        return params

    rng = np.random.default_rng(args.seed)
    clip = model.params
    if args.init is not None:
        _, saved = FlaxCLIPModel.from_pretrained(str(args.init), _do_init=False)
        clip = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), saved)
    if args.benchmark:
        args.pretrain_steps = args.steps = args.benchmark
    pre = {"vision": {"vision_model": clip["vision_model"]}, "heads": heads}
    pre = run(
        "pretrain", pre, pretrain_loss, args.pretrain_steps, kinds=PRETRAIN_KINDS, clip_norm=0
    )
    params = {"clip": {**clip, **pre["vision"]}, "heads": pre["heads"]}
    params = run(
        "clip",
        params,
        loss_fn,
        args.steps,
        kinds=CLIP_KINDS,
        clip_norm=1.0,
        evaluate_every=args.evaluate_every,
    )
    if args.benchmark:
        return

    elapsed = time.time() - start
    accuracy = evaluate(params)
    # float16 halves the file; loaders cast back to float32.
    half = jax.tree.map(lambda x: np.asarray(x, np.float16), params["clip"])
    model.save_pretrained(out, params=half)
    tokenizer.save_pretrained(out)
    CLIPImageProcessor(
        size={"shortest_edge": args.image_size},
        crop_size={"height": args.image_size, "width": args.image_size},
        image_mean=list(MEAN),
        image_std=list(STD),
    ).save_pretrained(out)
    previous = None
    if args.init is not None and (args.init / "training_info.json").exists():
        previous = json.loads((args.init / "training_info.json").read_text())
    info = {
        "command": " ".join(sys.argv),
        "continued_from": previous,
        "seed": args.seed,
        "pretrain_steps": args.pretrain_steps,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "parameters": int(num_params),
        "train_seconds": round(elapsed, 1),
        "held_out_accuracy": {k: round(float(v), 4) for k, v in accuracy.items()},
        "jax": jax.__version__,
    }
    (out / "training_info.json").write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info, indent=2), flush=True)


if __name__ == "__main__":
    main()
