"""Input data for NCL: long-tailed datasets, class counts and the input pipelines.

`long_tailed_indices`, `long_tailed_counts`, `DatasetInfo`, `eval_batch_for` and
`steps_per_epoch` need only numpy. `train_iterator` and `eval_iterator` serve the pipeline
that `dataset.pipeline` resolves to (`device_pipeline.resolve_pipeline`): the tf.data one
(`pipeline.py`) or the device-resident one (`device_pipeline.py`, no TensorFlow). The
TensorFlow-backed modules load on first use (and hide the GPUs from TensorFlow, which belong
to JAX); a prepared cache (`cache.py`) with the device pipeline never loads them.
"""

import importlib
from typing import Any

from ncl_jax.data.long_tail import DatasetInfo, long_tailed_counts, long_tailed_indices
from ncl_jax.data.sharding import eval_batch_for, steps_per_epoch

_LAZY = {
    "get_dataset_info": "ncl_jax.data.datasets",
    "write_skipped_files": "ncl_jax.data.datasets",
    "resolve_pipeline": "ncl_jax.data.device_pipeline",
    "needs_tensorflow": "ncl_jax.data.device_pipeline",
    "benchmark_pipeline": "ncl_jax.data.pipeline",
}

__all__ = [
    "DatasetInfo",
    "eval_batch_for",
    "long_tailed_counts",
    "long_tailed_indices",
    "steps_per_epoch",
    "train_iterator",
    "eval_iterator",
    *_LAZY,
]


def _pipeline_module(dataset_config: Any):
    """pipeline.py or device_pipeline.py, as dataset.pipeline resolves (imported lazily: the
    tf.data one loads TensorFlow)."""
    device = importlib.import_module("ncl_jax.data.device_pipeline")
    chosen = device.resolve_pipeline(dataset_config)
    return device if chosen == "device" else importlib.import_module("ncl_jax.data.pipeline")


def train_iterator(dataset_config: Any, **kwargs) -> Any:
    """One epoch of this process's training batches from the configured pipeline; keyword
    arguments and batches as `pipeline.train_iterator`."""
    return _pipeline_module(dataset_config).train_iterator(dataset_config, **kwargs)


def eval_iterator(dataset_config: Any, **kwargs) -> Any:
    """This process's padded, masked evaluation batches from the configured pipeline;
    keyword arguments and batches as `pipeline.eval_iterator`."""
    return _pipeline_module(dataset_config).eval_iterator(dataset_config, **kwargs)


def __getattr__(name: str) -> Any:
    """Imports the TensorFlow-backed parts only when they are used (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'ncl_jax.data' has no attribute {name!r}")
