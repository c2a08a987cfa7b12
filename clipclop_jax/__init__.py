"""clipclop-jax: CLIP-guided collage (CLIP-CLOP) in JAX."""

from clipclop_jax.version import __version__

__all__ = ["__version__"]
