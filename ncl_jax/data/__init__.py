"""Input data for NCL: long-tailed datasets, class counts and tf.data pipelines.

`long_tailed_indices`, `long_tailed_counts`, `DatasetInfo` and `eval_batch_for` need only
numpy; the rest imports TensorFlow on first use (and hides the GPUs from it, which belong to
JAX).
"""

import importlib
from typing import Any

from ncl_jax.data.long_tail import DatasetInfo, long_tailed_counts, long_tailed_indices
from ncl_jax.data.sharding import eval_batch_for

_LAZY = {
    "get_dataset_info": "ncl_jax.data.datasets",
    "write_skipped_files": "ncl_jax.data.datasets",
    "train_iterator": "ncl_jax.data.pipeline",
    "eval_iterator": "ncl_jax.data.pipeline",
    "steps_per_epoch": "ncl_jax.data.pipeline",
    "benchmark_pipeline": "ncl_jax.data.pipeline",
}

__all__ = [
    "DatasetInfo",
    "eval_batch_for",
    "long_tailed_counts",
    "long_tailed_indices",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    """Imports the TensorFlow-backed parts only when they are used (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ncl_jax.data' has no attribute {name!r}")
