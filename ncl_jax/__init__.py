"""ncl_jax: Nested Collaborative Learning (CVPR 2022) for long-tailed recognition in JAX/Flax."""

__version__ = "0.1.0"
