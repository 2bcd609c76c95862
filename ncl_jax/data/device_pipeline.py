"""The device-resident input pipeline: an in-memory dataset held on the devices as uint8,
batched and augmented there in JAX (no TensorFlow).

The training subset and the evaluation split are copied once to every local device (CIFAR-LT:
tens of MB). Each step the host sends only indices:
the epoch order is `sharding.epoch_order(seed, epoch)` (the tf.data pipeline's, one
implementation), a process takes its slice of the global batch and splits it over its
devices (`sharding.Shard`), and one pmapped call gathers the images and applies the view of
`ncl_jax.data.jax_augment.apply_view` with one PRNG key per example:
fold_in(fold_in(fold_in(key(seed), epoch), position), view index), position counted in the
epoch's global order. So the pixels of a batch depend on (seed, epoch, position) only: a
resumed run and a run on another device or process count see the same pixels, as with the
tf.data pipeline (whose random streams are TensorFlow's, so the two pipelines' pixels
differ). Evaluation batches are padded with mask False as in the tf.data pipeline.

`dataset.pipeline` chooses: `tfdata`, `device`, or `auto` (`resolve_pipeline`): `device`
for a prepared cache (read where TensorFlow may be missing) and, on an accelerator, for any
in-memory dataset of at most DEVICE_DATA_LIMIT_BYTES whose views exist in JAX; otherwise
`tfdata`. On a CPU host the devices are the host's cores: tf.data augments on its own
threads while the step runs, where the device pipeline would augment in the same stream
between steps, so `auto` keeps tf.data there.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

from ncl_jax.data import cache, datasets
from ncl_jax.data.sharding import epoch_order, make_shard, train_epoch_shard
from ncl_jax.data.splits import IndexedSplit
from ncl_jax.errors import ConfigError, DataError

PIPELINES = ("auto", "tfdata", "device")
# `auto` moves a dataset onto the accelerators only if its images fit in this many bytes.
DEVICE_DATA_LIMIT_BYTES = 1 << 30
# The JAX views: JAX_VIEWS and apply_view(name, uint8 [N, H, W, 3], keys [N], *,
# normalization) -> float32 [N, H, W, 3], normalised as the tf.data views.
VIEW_MODULE = "ncl_jax.data.jax_augment"

Batch = dict[str, Any]


def _view_module():
    """The JAX augmentation module, or None where it is missing. Imported by name through
    importlib (lazy, and looked up in sys.modules each time) so that tests may stand in a
    trivial view for it."""
    try:
        return importlib.import_module(VIEW_MODULE)
    except ModuleNotFoundError as err:
        if err.name != VIEW_MODULE:
            raise
        return None


def jax_views() -> tuple[str, ...]:
    """Names of the views the device pipeline can apply (empty without the JAX views)."""
    module = _view_module()
    return tuple(module.JAX_VIEWS) if module is not None else ()


def check_views(names: tuple[str, ...]) -> None:
    """Raises ConfigError naming the first view that has no JAX implementation."""
    available = jax_views()
    for name in names:
        if name not in available:
            raise ConfigError(
                f"view {name!r} has no JAX implementation for dataset.pipeline='device' "
                f"(JAX views: {available or 'none'}); choose one of those, or "
                "--config.dataset.pipeline=tfdata."
            )


def resolve_pipeline(dataset_config: Any) -> str:
    """'tfdata' or 'device' for this dataset config (module docstring: how `auto` picks).
    Raises ConfigError for an unknown choice, and for 'device' with a dataset that is not
    decoded into memory or a train / eval view missing in JAX."""
    cfg = dataset_config
    if cfg.pipeline not in PIPELINES:
        raise ConfigError(f"dataset.pipeline={cfg.pipeline!r} is unknown; use one of {PIPELINES}.")
    views = (cfg.train_view, cfg.eval_view)
    if cfg.pipeline == "auto":
        if cfg.source != cache.SOURCE and (
            jax.default_backend() == "cpu"
            or not set(views) <= set(jax_views())
            or not _fits(datasets.resolve(cfg))
        ):
            return "tfdata"
    elif cfg.pipeline == "tfdata":
        return "tfdata"
    _in_memory(cfg)
    check_views(views)
    return "device"


def needs_tensorflow(dataset_config: Any) -> bool:
    """Whether reading this dataset config loads TensorFlow: false only for a prepared cache
    read by the device pipeline."""
    return not (
        dataset_config.source == cache.SOURCE and resolve_pipeline(dataset_config) == "device"
    )


def _fits(data: datasets.ResolvedDataset) -> bool:
    splits = (data.train, data.eval)
    if not all(isinstance(s, IndexedSplit) and s.images is not None for s in splits):
        return False
    return sum(s.images[:1].nbytes * len(s) for s in splits) <= DEVICE_DATA_LIMIT_BYTES


def _in_memory(cfg: Any) -> datasets.ResolvedDataset:
    data = datasets.resolve(cfg)
    for name, split in (("training", data.train), ("evaluation", data.eval)):
        if not isinstance(split, IndexedSplit) or split.images is None:
            raise ConfigError(
                f"dataset.pipeline='device' needs the {name} images decoded in memory "
                f"(CIFAR or a cache); {cfg.name!r} is read from files: use "
                "--config.dataset.pipeline=tfdata."
            )
    return data


# Each split's images (its rows, in example order) on the local devices, uploaded once.
_ON_DEVICES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _on_devices(split: IndexedSplit, devices: tuple) -> jax.Array:
    """uint8 [D, N, H, W, 3]: example i of the split at [:, i] on each device."""
    held = _ON_DEVICES.setdefault(split, {})
    if devices not in held:
        held.clear()  # one copy per split: a new device set replaces the old one
        images = split.images[split.rows]
        stacked = np.broadcast_to(images, (len(devices), *images.shape))
        mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))
        held[devices] = jax.device_put(stacked, sharding)
    return held[devices]


def _example_keys(seed_epoch: jax.Array, positions: jax.Array, view: int) -> jax.Array:
    """PRNG keys [b]: fold_in(fold_in(fold_in(key(seed), epoch), position), view)."""
    base = jax.random.fold_in(jax.random.key(seed_epoch[0]), seed_epoch[1])
    return jax.vmap(lambda p: jax.random.fold_in(jax.random.fold_in(base, p), view))(positions)


@functools.cache
def _gather_and_augment(
    names: tuple[str, ...], apply_view: Callable, normalization: str, devices: tuple
):
    """pmap of (images [M, ...], indices [b], positions [b], seed_epoch [2]) -> one array
    per view, float32 [b, H, W, 3], normalised; view i gets the keys of index i."""

    def per_device(images, indices, positions, seed_epoch):
        pixels = images[indices]
        return tuple(
            apply_view(
                name, pixels, _example_keys(seed_epoch, positions, i), normalization=normalization
            )
            for i, name in enumerate(names)
        )

    return jax.pmap(per_device, in_axes=(0, 0, 0, None), devices=list(devices))


def _local_devices(num_local_devices: int) -> tuple:
    devices = jax.local_devices()
    if num_local_devices > len(devices):
        raise ConfigError(
            f"num_local_devices={num_local_devices} exceeds this process's {len(devices)} devices."
        )
    return tuple(devices[:num_local_devices])


def _waits_for_views(devices: tuple) -> bool:
    """Whether each batch's views are waited for before the batch is handed on: on CPU
    devices only. XLA:CPU aborts the process when the augmentation (long lax.map loops) and a
    step with an all-reduce are dispatched more than about a hundred calls ahead: one host
    device waits at the all-reduce past XLA's 40 s rendezvous timeout for the other
    (tests/test_device_pipeline.py reproduces it). The CPU cores run the views and the step in
    turn anyway, so waiting costs no measurable speed there (docs/performance.md);
    accelerators keep dispatching ahead."""
    return all(d.platform == "cpu" for d in devices)


def _seed_epoch(seed: int, epoch: int) -> np.ndarray:
    if not 0 <= seed < 2**32 or not 0 <= epoch < 2**32:
        raise ConfigError(f"seed={seed} and epoch={epoch} must lie in [0, 2**32).")
    return np.array([seed, epoch], np.uint32)


def train_iterator(
    dataset_config: Any,
    *,
    global_batch_size: int,
    seed: int,
    epoch: int,
    start_step: int = 0,
    two_views: bool = False,
    num_local_devices: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """One epoch of this process's training batches from `start_step` on, as
    `pipeline.train_iterator` yields them, but as device arrays: 'image' float32
    [D, b, S, S, 3], 'label' int32 [D, b] and, with `two_views`, 'key_image'. Raises
    ConfigError as `pipeline.train_iterator` does, and for views missing in JAX."""
    cfg = dataset_config
    shard = make_shard(global_batch_size, num_local_devices, process_index, process_count)
    data = _in_memory(cfg)
    shard = train_epoch_shard(
        shard, num_train=data.info.num_train, seed=seed, epoch=epoch, start_step=start_step
    )
    names = (cfg.train_view, cfg.key_view) if two_views else (cfg.train_view,)
    check_views(names)
    view_module = _view_module()
    seed_epoch = _seed_epoch(seed, epoch)
    devices = _local_devices(num_local_devices)
    images = _on_devices(data.train, devices)
    step_fn = _gather_and_augment(names, view_module.apply_view, cfg.normalization, devices)
    shape = (shard.num_steps, num_local_devices, shard.per_process // num_local_devices)
    positions = shard.positions()
    indices = epoch_order(seed, epoch, len(data.train))[positions]
    labels = data.train.labels[indices].astype(np.int32).reshape(shape)
    positions, indices = positions.reshape(shape), indices.reshape(shape)
    wait = _waits_for_views(devices)
    for step in range(shard.num_steps):
        views = step_fn(images, indices[step], positions[step], seed_epoch)
        if wait:
            jax.block_until_ready(views)
        yield {"label": labels[step], **dict(zip(("image", "key_image"), views, strict=False))}


def eval_iterator(
    dataset_config: Any,
    *,
    global_batch_size: int,
    num_local_devices: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """This process's evaluation batches, as `pipeline.eval_iterator` yields them ('image',
    'label', 'mask' bool [D, b]; padding repeats example 0 with mask False), with the images
    computed on the devices."""
    cfg = dataset_config
    shard = make_shard(global_batch_size, num_local_devices, process_index, process_count)
    data = _in_memory(cfg)
    check_views((cfg.eval_view,))
    total = len(data.eval)
    if cfg.eval_max_examples > 0:
        total = min(total, cfg.eval_max_examples)
    if total == 0:
        raise DataError(f"the eval split {cfg.eval_split!r} of {cfg.name!r} has no examples.")
    shard = dataclasses.replace(shard, last_step=-(-total // global_batch_size))
    devices = _local_devices(num_local_devices)
    images = _on_devices(data.eval, devices)
    view_module = _view_module()
    step_fn = _gather_and_augment(
        (cfg.eval_view,), view_module.apply_view, cfg.normalization, devices
    )
    shape = (shard.num_steps, num_local_devices, shard.per_process // num_local_devices)
    positions = shard.positions()
    mask = positions < total
    indices = np.where(mask, positions, 0)
    labels = np.where(mask, data.eval.labels[indices], 0).astype(np.int32).reshape(shape)
    positions, indices, mask = (a.reshape(shape) for a in (positions, indices, mask))
    seed_epoch = _seed_epoch(0, 0)
    wait = _waits_for_views(devices)
    for step in range(shard.num_steps):
        (image,) = step_fn(images, indices[step], positions[step], seed_epoch)
        if wait:
            jax.block_until_ready(image)
        yield {"image": image, "label": labels[step], "mask": mask[step]}
