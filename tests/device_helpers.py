"""A stand-in for ncl_jax.data.jax_augment and a tiny prepared cache, for the device
pipeline tests (no TensorFlow)."""

from __future__ import annotations

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np

from ncl_jax.config.base import get_base_config
from ncl_jax.data import cache
from ncl_jax.data.datasets import ResolvedDataset
from ncl_jax.data.device_pipeline import VIEW_MODULE
from ncl_jax.data.jax_augment import JAX_VIEWS
from ncl_jax.data.long_tail import DatasetInfo
from ncl_jax.data.splits import IndexedSplit


def fake_apply_view(name, images, keys, *, normalization):
    """pixels / 255 plus one uniform number per example from its key (and 1 for the second
    view's name), so a wrong key or image shows in every pixel."""
    noise = jax.vmap(lambda k: jax.random.uniform(k))(keys)
    shift = 1.0 if name == "moco_cifar" else 0.0
    return images.astype(jnp.float32) / 255.0 + noise[:, None, None, None] + shift


def fake_view_module() -> types.ModuleType:
    module = types.ModuleType(VIEW_MODULE)
    module.JAX_VIEWS = JAX_VIEWS  # the real names, stand-in pixels
    module.apply_view = fake_apply_view
    return module


def install_fake_views(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, VIEW_MODULE, fake_view_module())


def id_images(ids: np.ndarray, size: int = 8) -> np.ndarray:
    """uint8 [N, size, size, 3] whose pixel (0, 0) spells each id (read by `read_ids`)."""
    images = np.full((len(ids), size, size, 3), 77, np.uint8)
    images[:, 0, 0, 0] = ids % 256
    images[:, 0, 0, 1] = ids // 256 % 256
    images[:, 0, 0, 2] = 0
    return images


def read_ids(images) -> np.ndarray:
    """Ids from the fake view's output (pixel/255 + noise in [0, 1) + shift)."""
    pixels = np.asarray(images)[..., 0, 0, :]
    base = np.asarray(images)[..., 1, 1, 0] - 77 / 255  # the noise (and shift) of each example
    values = np.rint((pixels - base[..., None]) * 255).astype(np.int64)
    return values[..., 0] + 256 * values[..., 1]


def write_tiny_cache(path, *, num_train=60, num_eval=37, num_classes=10, **overrides):
    """A cache of id images (train ids 0.., eval ids 1000..) and the dataset config reading it."""
    rng = np.random.default_rng(0)
    train_labels = np.sort(rng.integers(0, num_classes, num_train)).astype(np.int64)
    train_labels[:num_classes] = np.arange(num_classes)  # no empty class
    eval_labels = rng.integers(0, num_classes, num_eval).astype(np.int64)
    train = IndexedSplit(
        labels=train_labels,
        rows=np.arange(num_train, dtype=np.int64),
        images=id_images(np.arange(num_train)),
    )
    evals = IndexedSplit(
        labels=eval_labels,
        rows=np.arange(num_eval, dtype=np.int64),
        images=id_images(1000 + np.arange(num_eval)),
    )
    info = DatasetInfo(
        name="tiny",
        num_classes=num_classes,
        class_counts=np.bincount(train_labels, minlength=num_classes),
        num_train=num_train,
        num_eval=num_eval,
        class_names=tuple(f"c{i}" for i in range(num_classes)),
    )
    cfg = get_base_config().dataset
    cfg.name = "tiny"
    cfg.num_classes = num_classes
    cfg.image_size = 8
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cache.write_cache(str(path), ResolvedDataset(info, train, evals), cfg)
    cfg.source = cache.SOURCE
    cfg.cache_path = str(path)
    cfg.train_view = "cifar_randaugment"
    return cfg
