"""ncl_jax: Nested Collaborative Learning (CVPR 2022) for long-tailed recognition in JAX/Flax."""

import os

__version__ = "0.1.0"

# TensorFlow (host-side input pipelines only) prints C++ INFO notices at import, which would
# bury the one-line errors; warnings and errors still show. An explicit setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
