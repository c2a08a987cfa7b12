"""XLA compiler options for the package's jitted entry points."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# XLA:CPU hands some element-wise and reduction fusions to the YNNPACK library; for the
# renderer's gather-heavy graphs that is 2-6x slower than XLA's own loops (see
# benchmarks/README.md), so we switch it off for our programs on CPU.
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def compiler_options() -> dict[str, str]:
    """Options to pass as ``jax.jit(..., compiler_options=...)`` on the default backend.

    Empty where they do not apply or this jaxlib does not know them.
    """
    if jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(jnp.negative, compiler_options=_CPU_OPTIONS)(jnp.zeros(1)).block_until_ready()
    except Exception:  # An older or newer jaxlib without the option: keep its defaults.
        return {}
    return dict(_CPU_OPTIONS)


def jit(fun, **kwargs):
    """``jax.jit`` with the package's compiler options."""
    return jax.jit(fun, compiler_options=compiler_options() or None, **kwargs)
