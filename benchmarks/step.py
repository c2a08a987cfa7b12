"""Time of one optimisation step, split into its stages, against the CLIP-only floor.

    python benchmarks/step.py [--models demo,vit-b32] [--populations 1,2,4] [--crops 1,2,4]
        [--batchings per_collage,population]

For each model, population P and crops K it times, each compiled on its own:
  render   forward+backward of P windowed renders (100 patches, 224x224);
  augment  forward+backward of the P*K augmented crops;
  clip     forward+backward of CLIP's image tower on P*K images w.r.t. the pixels: the floor,
           what any CLIP-guided step must pay;
  update   the optax update and clamp of P collages;
  step     the real compiled step (``optimise.make_chunk``), per step, for each
           ``OptimConfig.batching`` in --batchings (one collage at a time, or vmapped).
and prints a Markdown table with step / clip, the overhead over the floor. "vit-b32" is a
randomly initialised FlaxCLIPModel with ViT-B/32's architecture (no download needed).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import optax

from clipclop_jax import xla_options
from clipclop_jax.collage.params import Collage, clamp, random_population
from clipclop_jax.collage.render import render
from clipclop_jax.config import CollageConfig, OptimConfig
from clipclop_jax.guidance.augment import AugmentConfig, random_augment
from clipclop_jax.guidance.objective import Guidance
from clipclop_jax.guidance.perceptor import OPENAI_MEAN, OPENAI_STD, Perceptor, load_perceptor
from clipclop_jax.library.load import load_library
from clipclop_jax.search.optimise import init_state, make_chunk, make_optimizer
from clipclop_jax.search.sharding import place, population_mesh


def vit_b32_perceptor() -> Perceptor:
    """ViT-B/32 with random weights, built without the slow eager initialisation."""
    from transformers import CLIPConfig, FlaxCLIPModel

    model = FlaxCLIPModel(CLIPConfig(), _do_init=False)
    params = jax.jit(model.init_weights, static_argnums=1)(jax.random.PRNGKey(0), model.input_shape)
    return Perceptor(
        name="vit-b32-random",
        image_size=224,
        mean=OPENAI_MEAN,
        std=OPENAI_STD,
        params=params,
        embed_dim=512,
        max_text_tokens=77,
        module=model.module,
        tokenizer=None,
    )


def timed(fun, *args, repeats: int):
    """(seconds per call, compile seconds) of ``xla_options.jit(fun)``."""
    start = time.perf_counter()
    compiled = xla_options.jit(fun).lower(*args).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return best, compile_s


def stage_times(perceptor, library, population, crops, repeats, batchings):
    config = CollageConfig()
    size = perceptor.image_size
    key = jax.random.key(0)
    collages = random_population(key, config, library.num_patches, population)
    background = jnp.zeros((*config.canvas_shape, 3), jnp.float32)

    def render_all(params):
        return jax.vmap(lambda c: render(c, library, background, config))(
            Collage(params, collages.patch_index)
        )

    images = render_all(collages.params)
    render_s, _ = timed(
        lambda p: jax.grad(lambda q: jnp.sum(render_all(q)))(p), collages.params, repeats=repeats
    )

    def augment_all(images):
        keys = jax.random.split(key, population)
        return jax.vmap(lambda k, im: random_augment(k, im, num_crops=crops, output_size=size))(
            keys, images
        )

    augment_s, _ = timed(
        lambda x: jax.grad(lambda y: jnp.sum(augment_all(y)))(x), images, repeats=repeats
    )
    pixels = jax.random.uniform(key, (population * crops, size, size, 3))
    text = jax.random.normal(key, (1, perceptor.embed_dim))

    def clip_loss(params, x):
        return -jnp.sum(perceptor.embed_images(params, x) @ text.T)

    clip_s, _ = timed(jax.grad(clip_loss, argnums=1), perceptor.params, pixels, repeats=repeats)

    optimizer = make_optimizer(OptimConfig())
    opt_state = jax.vmap(optimizer.init)(collages.params)
    grads = jax.tree.map(jnp.ones_like, collages.params)

    def update(params, opt_state):
        updates, opt_state = jax.vmap(optimizer.update)(grads, opt_state, params)
        return clamp(jax.vmap(optax.apply_updates)(params, updates), config), opt_state

    update_s, _ = timed(update, collages.params, opt_state, repeats=repeats)

    guidance = Guidance(
        clip_params=perceptor.params,
        text_embeddings=text / jnp.linalg.norm(text),
        prompt_weights=jnp.ones((1,), jnp.float32),
        library=library,
        background=background,
    )
    times = dict(render=render_s, augment=augment_s, clip=clip_s, update=update_s)
    for batching in batchings:
        times[batching] = chunk_time(
            perceptor,
            config,
            OptimConfig(num_crops=crops, chunk_steps=5, batching=batching),
            collages,
            guidance,
            repeats,
        )
    return times


def chunk_time(perceptor, config, optim, collages, guidance, repeats):
    """(seconds per step, first call's seconds) of the real compiled chunk on one device."""
    optimizer = make_optimizer(optim)
    chunk = make_chunk(config, perceptor, optim, AugmentConfig())
    key = jax.random.key(0)
    # The chunk donates its state: give it a copy of the collages the next batching reuses.
    collages = jax.tree.map(jnp.copy, collages)
    state, guidance = place(init_state(key, collages, optimizer), guidance, population_mesh(1))
    steps = jnp.asarray(optim.chunk_steps, jnp.int32)
    start = time.perf_counter()
    state, losses = chunk(state, guidance, steps)
    jax.block_until_ready(losses)
    compile_s = time.perf_counter() - start
    best = float("inf")
    for _ in range(max(1, repeats // 2)):
        start = time.perf_counter()
        state, losses = chunk(state, guidance, steps)
        jax.block_until_ready(losses)
        best = min(best, (time.perf_counter() - start) / optim.chunk_steps)
    return best, compile_s


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="demo,vit-b32")
    parser.add_argument("--populations", default="1,2,4")
    parser.add_argument("--crops", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batchings", default="per_collage,population", help="OptimConfig.batching values"
    )
    args = parser.parse_args()

    library = jax.tree.map(jnp.asarray, load_library("shapes").low)
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, 100 patches, 224x224 canvas")
    print()
    print(
        "| model | P | K | render f+b (s) | augment f+b (s) | CLIP f+b (s) | update (s) "
        "| batching | step (s) | step / CLIP | step compile (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    batchings = args.batchings.split(",")
    for model in args.models.split(","):
        perceptor = vit_b32_perceptor() if model == "vit-b32" else load_perceptor(model)
        for population in map(int, args.populations.split(",")):
            for crops in map(int, args.crops.split(",")):
                t = stage_times(perceptor, library, population, crops, args.repeats, batchings)
                for batching in batchings:
                    step, compile_s = t[batching]
                    print(
                        f"| {model} | {population} | {crops} | {t['render']:.3f} "
                        f"| {t['augment']:.4f} | {t['clip']:.4f} | {t['update']:.4f} "
                        f"| {batching} | {step:.3f} | {step / t['clip']:.2f} | {compile_s:.1f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
