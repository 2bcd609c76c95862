"""The device pipeline end to end, for `ncl_jax.device_check`: a paper CIFAR row's input and
train step on the accelerator, and the wall time it projects for the whole row.

The row (configs/cifar10_lt.py:if100, the paper variant: three ResNet-32 experts, MoCo,
RandAugment and the MoCo key view, batch 64) reads a synthetic dataset of the real subset's
size (12,406 training images of 32x32 at IF 100, 10,000 evaluation images) from a prepared
cache written on the fly, through `dataset.pipeline=device`: so it needs neither TensorFlow
nor the CIFAR files, and its pixels (random) cost what real ones cost. Timed by
`ncl_jax.perf.input_step` (the device pipeline alone, and feeding the step, dispatched ahead as
training dispatches on an accelerator). On a CPU-only host (the reduced grid) the same code
runs on a tiny network and dataset: it checks the path and measures nothing.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np

from ncl_jax.config.recipes import checkout_config
from ncl_jax.config.variants import resolve_config
from ncl_jax.data import cache
from ncl_jax.data.datasets import ResolvedDataset
from ncl_jax.data.long_tail import DatasetInfo, long_tailed_counts
from ncl_jax.data.splits import IndexedSplit
from ncl_jax.perf import input_step

CONFIG = ("cifar10_lt", "if100")  # configs/<module>.py:<argument>
# The reduced grid's scale-down (as device_grid's tiny families): tiny network, 8 px images,
# 200 images in the largest class (2 in the smallest).
_TINY = {"model.depth": 1, "model.width": 4, "dataset.image_size": 8}
_TINY_N_MAX, _TINY_EVAL = 200, 32
# Seconds the row is expected to take before anything is measured (compiling the step and
# the two views included); the row is skipped if it would end past the check's budget.
FIRST_ESTIMATE_S = {"full": 120.0, "reduced": 60.0}
TIMING = {
    "full": {"steps": 50, "warmup": 3, "repeats": 3},
    "reduced": {"steps": 2, "warmup": 1, "repeats": 1},
}


def row_config(kind: str):
    """The resolved config of the row (`kind`: "full" or "reduced"), before its cache."""
    config = checkout_config(*CONFIG)
    if kind == "reduced":
        for dotted, value in _TINY.items():
            section, leaf = dotted.split(".")
            config[section][leaf] = value
        config.batch_size = 16
    config.dataset.pipeline = "device"
    return resolve_config(config)


def write_synthetic_cache(config, path: str, *, n_max: int = 5000, num_eval: int = 10_000):
    """Writes a cache of random uint8 images with the long-tailed class counts of `config`'s
    subset (n_max in the head class) to `path`; returns (a copy of `config` reading it, the
    number of training images)."""
    d = config.dataset
    counts = long_tailed_counts(n_max, d.num_classes, d.imbalance_factor)
    rng = np.random.default_rng(0)
    size = d.image_size

    def split(labels: np.ndarray) -> IndexedSplit:
        images = rng.integers(0, 256, (len(labels), size, size, 3), dtype=np.uint8)
        return IndexedSplit(
            labels=labels, rows=np.arange(len(labels), dtype=np.int64), images=images
        )

    train_labels = np.repeat(np.arange(d.num_classes), counts).astype(np.int64)
    eval_labels = (np.arange(num_eval) % d.num_classes).astype(np.int64)
    info = DatasetInfo(
        name=d.name,
        num_classes=d.num_classes,
        class_counts=counts.astype(np.int64),
        num_train=len(train_labels),
        num_eval=num_eval,
        class_names=tuple(f"class_{c}" for c in range(d.num_classes)),
    )
    cache.write_cache(path, ResolvedDataset(info, split(train_labels), split(eval_labels)), d)
    reading = config.copy_and_resolve_references()
    reading.dataset.source = cache.SOURCE
    reading.dataset.cache_path = path
    reading.lock()
    return reading, info.num_train


def measure(kind: str) -> dict[str, Any]:
    """{"config", "num_train", "batch_size", "epochs", "input_img_per_s",
    "input_step_img_per_s"} of the row on this host's devices (module docstring)."""
    config = row_config(kind)
    full = kind == "full"
    with tempfile.TemporaryDirectory(prefix="ncl_device_epoch_") as tmp:
        reading, num_train = write_synthetic_cache(
            config,
            os.path.join(tmp, "synthetic.npz"),
            **({} if full else {"n_max": _TINY_N_MAX, "num_eval": _TINY_EVAL}),
        )
        rates = input_step.time_input_and_step(reading, **TIMING[kind], pipelines=("device",))
    return {
        "config": f"configs/{CONFIG[0]}.py:{CONFIG[1]}",
        "num_train": num_train,
        "batch_size": int(config.batch_size),
        "epochs": int(config.num_epochs),
        **rates["device"],
    }
