"""Tiny configs and batches shared by the model/step tests (fast on 2 CPU cores)."""

import dataclasses

import numpy as np

from ncl_jax.config import builders
from ncl_jax.config.base import get_base_config
from ncl_jax.config.recipes import apply_variant, checkout_config
from ncl_jax.config.variants import resolve_config

NUM_CLASSES = 10
IMAGE = 8


def tiny_config(variant="paper", *, moco=True, num_experts=3, batch_size=16, queue_size=32):
    config = get_base_config()
    config.dataset.num_classes = NUM_CLASSES
    config.dataset.image_size = IMAGE
    config.model.num_experts = num_experts
    config.model.depth = 1
    config.model.width = 4
    config.moco.enabled = moco
    config.moco.dim = 8
    config.moco.queue_size = queue_size
    config.batch_size = batch_size
    config.num_epochs = 10
    apply_variant(config, variant)
    return resolve_config(config)


def class_counts():
    return np.array([500, 300, 180, 108, 65, 39, 23, 14, 8, 5], np.float32)


def global_batch(batch_size, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(batch_size, IMAGE, IMAGE, 3)).astype(np.float32),
        "key_image": rng.normal(size=(batch_size, IMAGE, IMAGE, 3)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, size=batch_size).astype(np.int32),
    }


def shard(batch, num_devices):
    return {
        k: v.reshape(num_devices, v.shape[0] // num_devices, *v.shape[1:]) for k, v in batch.items()
    }


def config_file(name: str, arg: str | None = None):
    """configs/<name>.py (unresolved), built with `arg` as `--config=configs/<name>.py:arg`."""
    return checkout_config(name, arg)


def loss_options(variant="paper", **overrides):
    """The LossOptions of the resolved tiny config of `variant`, with fields replaced."""
    return dataclasses.replace(builders.loss_options(tiny_config(variant)), **overrides)


def smoke_config(*, resolved=True, **overrides):
    """configs/smoke.py with dotted-field overrides, e.g. smoke_config(**{"loss.num_hard": 2}),
    resolved as a program resolves it after the command line (or not, resolved=False)."""
    config = config_file("smoke")
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    return resolve_config(config) if resolved else config
