"""The configured dataset, resolved and validated: train/eval splits and their DatasetInfo.

`get_dataset_info(config.dataset)` resolves the configured source (TFDS, split list or image
folder), applies the CIFAR-LT profile, validates everything and returns a `DatasetInfo`;
it raises `ConfigError` / `DataError` with a one-line fix before any compute starts.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from ncl_jax.data import cache, file_sources
from ncl_jax.data.long_tail import DatasetInfo, long_tailed_counts, long_tailed_indices
from ncl_jax.data.splits import IndexedSplit, StreamedSplit
from ncl_jax.errors import ConfigError, DataError

__all__ = [
    "DatasetInfo",
    "ResolvedDataset",
    "class_names",
    "get_dataset_info",
    "long_tailed_counts",
    "long_tailed_indices",
    "resolve",
]


@dataclasses.dataclass(frozen=True, eq=False)
class ResolvedDataset:
    """The validated train / eval splits behind a DatasetInfo (used by the pipeline)."""

    info: DatasetInfo
    train: IndexedSplit | StreamedSplit
    eval: IndexedSplit | StreamedSplit


_KEY_FIELDS = (
    "source",
    "name",
    "data_dir",
    "download",
    "train_split",
    "eval_split",
    "num_classes",
    "imbalance_factor",
    "subset_seed",
    "train_list",
    "eval_list",
    "image_root",
    "cache_path",
)
_RESOLVED: dict[tuple, ResolvedDataset] = {}


def get_dataset_info(dataset_config: Any) -> DatasetInfo:
    """Validates the configured dataset and returns its class counts and sizes."""
    return resolve(dataset_config).info


def resolve(cfg: Any) -> ResolvedDataset:
    """Opens, validates and (with `cfg.cache`) memoises the configured train/eval splits."""
    key = tuple(str(getattr(cfg, f)) for f in _KEY_FIELDS) + (os.environ.get("TFDS_DATA_DIR"),)
    if cfg.cache and key in _RESOLVED:
        return _RESOLVED[key]
    if cfg.num_classes < 1:
        raise ConfigError(f"dataset.num_classes={cfg.num_classes} must be >= 1.")
    if cfg.source != cache.SOURCE:  # a cache is read with numpy alone: no TensorFlow
        _sources().download_mode(cfg.download)  # a bad value fails whatever the source
    readers = {
        cache.SOURCE: _resolve_cache,
        "tfds": _resolve_tfds,
        "split_list": _resolve_split_list,
        "image_folder": _resolve_image_folder,
    }
    if cfg.source not in readers:
        raise ConfigError(
            f"dataset.source={cfg.source!r} is unknown; use one of {sorted(readers)}."
        )
    train, evals, counts, names = readers[cfg.source](cfg)
    _check_no_empty_class(counts, f"the training set of {cfg.name!r}")
    info = DatasetInfo(
        name=cfg.name,
        num_classes=cfg.num_classes,
        class_counts=counts,
        num_train=int(counts.sum()) if isinstance(train, StreamedSplit) else len(train),
        num_eval=len(evals),
        class_names=names,
    )
    info.class_counts.setflags(write=False)
    resolved = ResolvedDataset(info=info, train=train, eval=evals)
    if cfg.cache:
        _RESOLVED[key] = resolved
    return resolved


def _sources():
    """ncl_jax.data.sources, imported lazily: it loads TensorFlow, which a cache source and
    the file sources do not need (accelerator images may lack it)."""
    from ncl_jax.data import sources  # lazy: TensorFlow only for TFDS sources

    return sources


def class_names(cfg: Any) -> tuple[str, ...] | None:
    """Class names by label, read without decoding any image: the TFDS builder's label names
    or the training folder's class folders; None for split lists, which carry numbers only.
    Raises what `resolve` raises for a source that cannot be opened (it may download like
    `resolve`: pass dataset.download=False to forbid that)."""
    if cfg.source == "tfds":
        sources = _sources()
        builder = sources.open_builder(cfg)
        sources.check_builder(builder, cfg)
        return _label_names(builder)
    if cfg.source == cache.SOURCE:
        return cache.read_cache(cfg.cache_path).class_names
    if cfg.source == "image_folder" and cfg.image_root:
        return tuple(file_sources.folder_split(os.path.join(cfg.image_root, cfg.train_split))[1])
    return None


def _label_names(builder: Any) -> tuple[str, ...]:
    return tuple(str(name) for name in builder.info.features["label"].names)


def _long_tail(split: IndexedSplit, cfg: Any) -> IndexedSplit:
    """Applies the CIFAR-LT profile when imbalance_factor > 0 (0 keeps the split as is)."""
    if cfg.imbalance_factor == 0:
        return split
    keep = long_tailed_indices(
        split.labels, cfg.imbalance_factor, seed=cfg.subset_seed, num_classes=cfg.num_classes
    )
    return split.subset(keep)


def _counts(split: IndexedSplit, num_classes: int) -> np.ndarray:
    return np.bincount(split.labels, minlength=num_classes).astype(np.int64)


def _check_no_empty_class(counts: np.ndarray, where: str) -> None:
    """NCL's balanced losses take log(n_c): every class needs at least one training image."""
    empty = np.flatnonzero(counts == 0)
    if empty.size:
        raise DataError(
            f"class {int(empty[0])} has 0 images in {where} ({empty.size} empty classes); "
            "fix the data, the list, or --config.dataset.num_classes."
        )


def _check_labels(split: IndexedSplit, num_classes: int, where: str) -> None:
    if len(split) and (split.labels.min() < 0 or split.labels.max() >= num_classes):
        raise DataError(
            f"{where} has labels outside [0, {num_classes}); set --config.dataset.num_classes."
        )


def _resolve_cache(cfg: Any):
    """The training rows and evaluation set of a prepared cache (ncl_jax/data/cache.py), whose
    subset parameters must match the config's (the rows are already long-tailed)."""
    prepared = cache.read_cache(cfg.cache_path)
    prepared.check_matches(cfg)
    train = IndexedSplit(
        labels=prepared.train_labels,
        rows=np.arange(len(prepared.train_labels), dtype=np.int64),
        images=prepared.train_images,
    )
    evals = IndexedSplit(
        labels=prepared.eval_labels,
        rows=np.arange(len(prepared.eval_labels), dtype=np.int64),
        images=prepared.eval_images,
    )
    return train, evals, _counts(train, cfg.num_classes), prepared.class_names


def _resolve_tfds(cfg: Any):
    sources = _sources()
    builder = sources.open_builder(cfg)
    sources.check_builder(builder, cfg)
    if cfg.name in sources.IN_MEMORY_BUILDERS:
        if cfg.train_list or cfg.eval_list:
            raise ConfigError(
                f"train_list/eval_list filter streamed TFDS builders by file name; {cfg.name} "
                "has no file names: clear --config.dataset.train_list/eval_list."
            )
        train = sources.in_memory_split(builder, cfg.train_split, cache=cfg.cache)
        evals = sources.in_memory_split(builder, cfg.eval_split, cache=cfg.cache)
        _check_labels(train, cfg.num_classes, f"{cfg.name}/{cfg.train_split}")
        train = _long_tail(train, cfg)
        return train, evals, _counts(train, cfg.num_classes), _label_names(builder)
    if cfg.imbalance_factor != 0:
        raise ConfigError(
            f"imbalance_factor={cfg.imbalance_factor} needs random access, which {cfg.name} "
            "lacks; set --config.dataset.imbalance_factor=0 and give the long-tailed subset as "
            "--config.dataset.train_list."
        )
    train = sources.streamed_split(
        builder, cfg.train_split, cfg.train_list, cfg.num_classes, "train_list"
    )
    evals = sources.streamed_split(
        builder, cfg.eval_split, cfg.eval_list, cfg.num_classes, "eval_list"
    )
    if train.labels_by_key is not None:
        labels = np.fromiter(train.labels_by_key.values(), np.int64)
        counts = np.bincount(labels, minlength=cfg.num_classes).astype(np.int64)
    else:
        counts = sources.builder_label_counts(builder, cfg.train_split, cfg.num_classes)
    return train, evals, counts, _label_names(builder)


def _resolve_split_list(cfg: Any):
    for field in ("train_list", "eval_list"):
        if not getattr(cfg, field):
            raise ConfigError(
                f"source='split_list' needs dataset.{field}; set --config.dataset.{field} to a "
                "file of 'relative/path label' lines."
            )
    train = file_sources.list_split(cfg.image_root, cfg.train_list, cfg.num_classes, "train_list")
    evals = file_sources.list_split(cfg.image_root, cfg.eval_list, cfg.num_classes, "eval_list")
    train = _long_tail(train, cfg)
    return train, evals, _counts(train, cfg.num_classes), None


def _resolve_image_folder(cfg: Any):
    if not cfg.image_root:
        raise ConfigError(
            "source='image_folder' needs dataset.image_root; set --config.dataset.image_root "
            "to a folder holding <train_split>/<class>/*.jpg and <eval_split>/<class>/*.jpg."
        )
    train, classes = file_sources.folder_split(os.path.join(cfg.image_root, cfg.train_split))
    if len(classes) != cfg.num_classes:
        raise ConfigError(
            f"{os.path.join(cfg.image_root, cfg.train_split)} has {len(classes)} class folders "
            f"but dataset.num_classes={cfg.num_classes}; set --config.dataset.num_classes="
            f"{len(classes)}."
        )
    evals, _ = file_sources.folder_split(os.path.join(cfg.image_root, cfg.eval_split), classes)
    train = _long_tail(train, cfg)
    return train, evals, _counts(train, cfg.num_classes), tuple(classes)
