"""XLA compiler options for the package's jitted entry points."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# XLA:CPU hands some element-wise and reduction fusions to the YNNPACK library; for the
# renderer's gather-heavy graphs that is 2-6x slower than XLA's own loops (see
# benchmarks/README.md), so we switch it off for our programs on CPU.
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}

# XLA's algebraic simplifier rewrites what it can see: a divide by a visible constant, a
# slice of an axis of length 1, a module that is not partitioned. What it sees changes with
# the device count, so one collage's arithmetic would round differently on 1 and on 8
# devices. Programs that must give the same bits on any device count compile without it
# (docs/devices.md; benchmarks/README.md has the cost).
_DEVICE_COUNT_INVARIANT_OPTIONS = {"xla_disable_hlo_passes": "algsimp"}
# XLA:CPU's own matrix products may split a sum across the device's intra-op threads, and
# did so differently in processes with 1 and with 8 simulated devices; YNNPACK's gave the
# same bits in both. So those programs hand every standalone matrix product to YNNPACK
# (still none of the element-wise fusions).
_CPU_DEVICE_COUNT_INVARIANT_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "individual_dot"}


@functools.cache
def compiler_options(device_count_invariant: bool = False) -> dict[str, str]:
    """Options to pass as ``jax.jit(..., compiler_options=...)`` on the default backend.

    Args:
      device_count_invariant: also switch off the rewrites that make a program's rounding
        depend on how many devices it is partitioned over.

    Options this jaxlib does not know are left out.
    """
    wanted = dict(_DEVICE_COUNT_INVARIANT_OPTIONS) if device_count_invariant else {}
    if jax.default_backend() == "cpu":
        wanted.update(_CPU_OPTIONS)
        if device_count_invariant:
            wanted.update(_CPU_DEVICE_COUNT_INVARIANT_OPTIONS)
    return {key: value for key, value in wanted.items() if _accepted(key, value)}


@functools.cache
def _accepted(key: str, value: str) -> bool:
    try:
        jax.jit(jnp.negative, compiler_options={key: value})(jnp.zeros(1)).block_until_ready()
    except Exception:  # An older or newer jaxlib without the option: keep its defaults.
        return False
    return True


def jit(fun, *, device_count_invariant: bool = False, **kwargs):
    """``jax.jit`` with the package's compiler options."""
    options = compiler_options(device_count_invariant)
    return jax.jit(fun, compiler_options=options or None, **kwargs)
