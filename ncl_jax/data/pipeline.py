"""tf.data input pipelines: deterministic epochs, per-example augmentation seeds, device sharding.

Indexed sources (CIFAR in memory, split lists, image folders): an epoch is a numpy permutation
seeded by (seed, epoch); global batch g holds the examples at positions [g*B, (g+1)*B) of that
order, process p takes its contiguous slice of every global batch, and the augmentation seed
of an example is stateless_fold_in([seed, epoch], position). Batches are therefore the same
for any process/device split or thread count, and `start_step` resumes exactly.

Streamed TFDS sources (imagenet2012, places365_small, i_naturalist2018): each process reads its
own shard (tfds.split_for_jax_process), keeps list members, shuffles with a buffer seeded by
(seed, epoch, process). Deterministic and resumable for a fixed process count only.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ncl_jax.data import augment, sources
from ncl_jax.data.datasets import file_problem, get_dataset_info, resolve
from ncl_jax.data.sharding import (
    Shard,
    epoch_order,
    make_shard,
    train_epoch_shard,
)
from ncl_jax.data.splits import IndexedSplit, StreamedSplit
from ncl_jax.errors import DataError

sources.hide_accelerators_from_tf()

View = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
Batch = dict[str, np.ndarray]


# Each in-memory split's images (or paths) as one TF tensor, built once per split.
_STORAGE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _storage(split: IndexedSplit) -> tf.Tensor:
    if split not in _STORAGE:
        _STORAGE[split] = tf.constant(split.images if split.images is not None else split.paths)
    return _STORAGE[split]


def _make_view(name: str, *, image_size: int, normalization: str) -> View:
    """The augmentation `name` from ncl_jax.data.augment."""
    return augment.make_view(name, image_size=image_size, normalization=normalization)


def _options(ds: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.deterministic = True
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def _parallel(cfg: Any) -> int:
    return tf.data.AUTOTUNE if cfg.num_parallel_calls < 0 else max(1, cfg.num_parallel_calls)


def _views(cfg: Any, names: list[str]) -> list[View]:
    return [_traced_view(_make_view, n, cfg.image_size, cfg.normalization) for n in names]


@functools.cache
def _traced_view(factory: Callable, name: str, image_size: int, normalization: str) -> View:
    """The view as one tf.function traced once per process, not once per epoch's dataset."""
    view = factory(name, image_size=image_size, normalization=normalization)
    signature = [tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int64)]
    return tf.function(view, input_signature=signature)


def _loader(split: IndexedSplit) -> Callable[[tf.Tensor], tf.Tensor]:
    """Storage row -> uint8 [H, W, 3]: a gather from memory, or a file read and decode."""
    storage = _storage(split)
    if split.images is not None:
        return lambda row: tf.gather(storage, row)
    return lambda row: sources.decode_image(tf.io.read_file(tf.gather(storage, row)))


def fold_in(key: tf.Tensor, data: int | tf.Tensor) -> tf.Tensor:
    """int64 [2] key for `data` (TF's fold_in keeps data's dtype, so int32 data would halve it)."""
    return tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))


def _augment_fn(views: list[View], base_key: tf.Tensor) -> Callable:
    """image, position -> view outputs, each seeded by fold_in(fold_in(base, position), view)."""

    def apply(image: tf.Tensor, position: tf.Tensor) -> dict[str, tf.Tensor]:
        key = fold_in(base_key, position)
        out = {}
        for i, (name, view) in enumerate(zip(("image", "key_image"), views, strict=False)):
            out[name] = view(image, fold_in(key, i))
        return out

    return apply


def _trail(
    cfg: Any, split_name: str, split: IndexedSplit, examples: np.ndarray, shard: Shard
) -> FileTrail | None:
    """The FileTrail of a split of files whose elements are `examples` (indices into the
    split, in element order); None for images held in memory."""
    if split.paths is None:
        return None
    paths = split.paths[split.rows[examples]]
    return FileTrail(cfg=cfg, split=split_name, paths=paths, per_batch=shard.per_process)


def _to_devices(num_devices: int) -> Callable:
    """[b_process, ...] -> [D, b_process / D, ...] for pmap."""

    def split(batch: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {k: tf.reshape(v, [num_devices, -1, *v.shape[1:]]) for k, v in batch.items()}

    return split


def _finish(ds: tf.data.Dataset, shard: Shard, prefetch: int) -> tf.data.Dataset:
    """Per-process batches reshaped for the local devices; prefetch 0 = none, -1 = AUTOTUNE."""
    ds = ds.batch(shard.per_process, drop_remainder=True).map(_to_devices(shard.num_devices))
    if prefetch != 0:
        ds = ds.prefetch(tf.data.AUTOTUNE if prefetch < 0 else prefetch)
    return _options(ds)


@dataclasses.dataclass(frozen=True)
class FileTrail:
    """The file behind every element of a file split's dataset, in element order: tf.data
    cannot say which element's op failed, so the batch that fails is looked up here and its
    files decoded again one by one (`datasets.file_problem`) to name the bad one."""

    cfg: Any
    split: str  # "train" | "eval": whose view (datasets.SPLIT_VIEWS) the files go through
    paths: np.ndarray  # str [num_steps * per_process], element k of this process's stream
    per_batch: int

    def error(self, batch: int, what: str) -> DataError | None:
        """DataError naming the first bad file of `batch` (or of the two after it, which
        prefetching may have read first); None when all of them read well now."""
        start = batch * self.per_batch
        for path in dict.fromkeys(self.paths[start : start + 3 * self.per_batch].tolist()):
            problem = file_problem(self.cfg, path, self.split, full=True)
            if problem is not None:
                return DataError(
                    f"{path} {problem}; met by the input pipeline in {what}: fix or remove "
                    "it (ncl-check-dataset checks every file)."
                )
        return None


def _iterate(
    ds: tf.data.Dataset, expected: int, what: str, files: FileTrail | None = None
) -> Iterator[Batch]:
    """Yields numpy batches and fails loudly if a stream ends early (instead of hanging).

    With `files` (sources of image files), a batch that fails to load is a DataError naming
    the file that caused it, instead of TensorFlow's traceback without it."""
    count = 0
    batches = ds.as_numpy_iterator()
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            break
        except tf.errors.OpError as err:
            named = None if files is None else files.error(count, what)
            if named is None:
                raise
            raise named from err
        count += 1
        yield batch
    if count != expected:
        raise DataError(
            f"{what} produced {count} of {expected} batches: the TFDS split holds fewer "
            "matching records than the list; check the list against the split."
        )


# ---------------------------------------------------------------------------------- training


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
    """One epoch of this process's training batches, from `start_step` on.

    Yields steps_per_epoch - start_step dicts: 'image' float32 [D, b, S, S, 3], 'label'
    int32 [D, b] and, with `two_views`, 'key_image' (the MoCo key view) [D, b, S, S, 3].
    """
    cfg = dataset_config
    shard = make_shard(global_batch_size, num_local_devices, process_index, process_count)
    data = resolve(cfg)
    shard = train_epoch_shard(
        shard, num_train=data.info.num_train, seed=seed, epoch=epoch, start_step=start_step
    )
    views = _views(cfg, [cfg.train_view, cfg.key_view] if two_views else [cfg.train_view])
    base_key = tf.constant([seed, epoch], tf.int64)
    files = None
    if isinstance(data.train, IndexedSplit):
        order = epoch_order(seed, epoch, len(data.train))
        ds = _indexed_train(cfg, data.train, order, shard, _augment_fn(views, base_key))
        files = _trail(cfg, "train", data.train, order[shard.positions()], shard)
    else:
        # Positions count within this process's stream, so the process joins the seed.
        key = fold_in(base_key, process_index)
        stream_seed = seed * 1_000_003 + epoch * 7_919 + process_index
        ds = _streamed_train(cfg, data.train, shard, _augment_fn(views, key), stream_seed)
    ds = _finish(ds, shard, cfg.prefetch)
    return _iterate(ds, shard.num_steps, f"training epoch {epoch}", files)


def _indexed_train(
    cfg: Any, split: IndexedSplit, order: np.ndarray, shard: Shard, augment: Callable
) -> tf.data.Dataset:
    """The examples at this process's positions of the epoch order, augmented per position."""
    positions = shard.positions()
    chosen = order[positions]
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "row": split.rows[chosen],
            "label": split.labels[chosen].astype(np.int32),
            "position": positions,
        }
    )
    load = _loader(split)

    def example(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {**augment(load(ex["row"]), ex["position"]), "label": ex["label"]}

    return ds.map(example, num_parallel_calls=_parallel(cfg), deterministic=True)


def _stream_records(source: StreamedSplit, **as_dataset_kwargs) -> tf.data.Dataset:
    """(image bytes, int32 label) of a streamed TFDS split; list members only, list labels."""
    ds = source.builder.as_dataset(
        decoders={"image": tfds.decode.SkipDecoding()}, **as_dataset_kwargs
    )
    table = None
    if source.labels_by_key is not None:
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(source.labels_by_key)),
                tf.constant(list(source.labels_by_key.values()), tf.int64),
            ),
            default_value=-1,
        )

    def record(ex: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
        if table is None:
            label = ex["label"]
        else:
            label = table.lookup(sources.tf_match_key(ex[source.key_feature], source.key_patterns))
        return ex["image"], tf.cast(label, tf.int32)

    return ds.map(record).filter(lambda image, label: label >= 0)


def _streamed_train(
    cfg: Any, split: StreamedSplit, shard: Shard, augment: Callable, stream_seed: int
) -> tf.data.Dataset:
    """A seeded shuffle of this process's TFDS shard, then a spare reshuffled pass.

    The spare pass is read only when list filtering leaves the shard short of a full epoch,
    so in a normal epoch every record appears at most once.
    """
    files = tfds.split_for_jax_process(
        split.split, process_index=shard.process, process_count=shard.processes
    )

    def shuffled_pass(pass_index: int) -> tf.data.Dataset:
        pass_seed = (stream_seed + 104_729 * pass_index) % 2**31
        records = _stream_records(
            split,
            split=files,
            shuffle_files=True,
            read_config=tfds.ReadConfig(shuffle_seed=pass_seed),
        )
        return records.shuffle(cfg.shuffle_buffer, seed=pass_seed)

    per = shard.per_process
    ds = shuffled_pass(0).concatenate(shuffled_pass(1)).enumerate()
    ds = ds.skip(shard.first_step * per).take(shard.num_steps * per)

    def example(position: tf.Tensor, record: tuple[tf.Tensor, tf.Tensor]):
        image, label = record
        return {**augment(sources.decode_image(image), position), "label": label}

    return ds.map(example, num_parallel_calls=_parallel(cfg), deterministic=True)


# ---------------------------------------------------------------------------------- evaluation


def eval_iterator(
    dataset_config: Any,
    *,
    global_batch_size: int,
    num_local_devices: int,
    process_index: int = 0,
    process_count: int = 1,
) -> Iterator[Batch]:
    """This process's evaluation batches: 'image', 'label' and 'mask' (bool [D, b]).

    The eval set (first eval_max_examples when > 0) is padded to whole global batches with
    mask False; over all processes every example appears exactly once with mask True.
    """
    cfg = dataset_config
    shard = make_shard(global_batch_size, num_local_devices, process_index, process_count)
    data = resolve(cfg)
    total = len(data.eval)
    if cfg.eval_max_examples > 0:
        total = min(total, cfg.eval_max_examples)
    if total == 0:
        raise DataError(f"the eval split {cfg.eval_split!r} of {cfg.name!r} has no examples.")
    shard = dataclasses.replace(shard, last_step=-(-total // global_batch_size))
    (view,) = _views(cfg, [cfg.eval_view])
    files = None
    if isinstance(data.eval, IndexedSplit):
        ds = _indexed_eval(cfg, data.eval, view, total, shard)
        positions = shard.positions()
        files = _trail(cfg, "eval", data.eval, np.where(positions < total, positions, 0), shard)
    else:
        ds = _streamed_eval(cfg, data.eval, view, total, shard)
    return _iterate(_finish(ds, shard, cfg.prefetch), shard.num_steps, "evaluation", files)


def _indexed_eval(
    cfg: Any, split: IndexedSplit, view: View, total: int, shard: Shard
) -> tf.data.Dataset:
    """Positions 0..total-1 in order; padding positions repeat example 0 with mask False."""
    positions = shard.positions()
    mask = positions < total
    index = np.where(mask, positions, 0)
    ds = tf.data.Dataset.from_tensor_slices(
        {
            "row": split.rows[index],
            "label": np.where(mask, split.labels[index], 0).astype(np.int32),
            "mask": mask,
        }
    )
    load, seed = _loader(split), tf.zeros([2], tf.int64)

    def example(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {"image": view(load(ex["row"]), seed), "label": ex["label"], "mask": ex["mask"]}

    return ds.map(example, num_parallel_calls=_parallel(cfg), deterministic=True)


def _streamed_eval(
    cfg: Any, split: StreamedSplit, view: View, total: int, shard: Shard
) -> tf.data.Dataset:
    """Every process reads the whole eval stream (image bytes only) and keeps its own slots.

    Exact padding needs global positions, so the split is not sharded by file; only the
    kept records are decoded.
    """
    ds = _stream_records(split, split=split.split, shuffle_files=False)
    ds = ds.take(total).enumerate().filter(lambda position, record: shard.owns(position))
    seed = tf.zeros([2], tf.int64)

    def example(position: tf.Tensor, record: tuple[tf.Tensor, tf.Tensor]):
        image, label = record
        image = view(sources.decode_image(image), seed)
        return {"image": image, "label": label, "mask": tf.constant(True)}

    ds = ds.map(example, num_parallel_calls=_parallel(cfg), deterministic=True)
    pad = {
        "image": tf.zeros([cfg.image_size, cfg.image_size, 3], tf.float32),
        "label": tf.constant(0, tf.int32),
        "mask": tf.constant(False),
    }
    padding = tf.data.Dataset.from_tensors(pad).repeat()
    return ds.concatenate(padding).take(shard.num_steps * shard.per_process)


# ---------------------------------------------------------------------------------- benchmark


def benchmark_pipeline(
    dataset_config: Any,
    *,
    global_batch_size: int,
    num_batches: int,
    two_views: bool,
    warmup_batches: int = 5,
) -> dict[str, float]:
    """Host input throughput (examples/s, each with both views when two_views) after warm-up."""
    get_dataset_info(dataset_config)  # decode / validate outside the timed region

    def batches() -> Iterator[Batch]:
        for epoch in itertools.count():
            yield from train_iterator(
                dataset_config,
                global_batch_size=global_batch_size,
                seed=0,
                epoch=epoch,
                two_views=two_views,
                num_local_devices=1,
            )

    stream = batches()
    for _ in range(warmup_batches):
        next(stream)
    start = time.perf_counter()
    for _ in range(num_batches):
        next(stream)
    seconds = time.perf_counter() - start
    num_images = num_batches * global_batch_size
    return {"img_per_s": num_images / seconds, "num_images": num_images, "seconds": seconds}
