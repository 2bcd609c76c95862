"""The configured dataset, resolved and validated: train/eval splits and their DatasetInfo.

`get_dataset_info(config.dataset)` resolves the configured source (TFDS, split list or image
folder), applies the CIFAR-LT profile, validates everything and returns a `DatasetInfo`;
it raises `ConfigError` / `DataError` with a one-line fix before any compute starts. Every
image file a split-list or image-folder split will read has its header checked then
(`file_check`); `dataset.on_bad_file` says whether a bad one stops the run or is left out.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np
from absl import logging

from ncl_jax.data import cache, file_check, file_sources
from ncl_jax.data.choices import SOURCES
from ncl_jax.data.long_tail import DatasetInfo, long_tailed_counts, long_tailed_indices
from ncl_jax.data.splits import IndexedSplit, StreamedSplit
from ncl_jax.errors import ConfigError, DataError

__all__ = [
    "DatasetInfo",
    "ResolvedDataset",
    "check_all_files",
    "class_names",
    "file_problem",
    "get_dataset_info",
    "long_tailed_counts",
    "long_tailed_indices",
    "resolve",
    "skipped_files",
    "write_skipped_files",
]


@dataclasses.dataclass(frozen=True, eq=False)
class ResolvedDataset:
    """The validated train / eval splits behind a DatasetInfo (used by the pipeline)."""

    info: DatasetInfo
    train: IndexedSplit | StreamedSplit
    eval: IndexedSplit | StreamedSplit
    bad_files: tuple[file_check.BadFile, ...] = ()  # left out under on_bad_file=skip


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
    "image_size",
    "train_view",
    "eval_view",
    "on_bad_file",
    "cache_path",
)
# The view each split's files go through, by config field. The MoCo key view is not here:
# every key view resizes what it gets, so it accepts any size.
SPLIT_VIEWS = {"train": "train_view", "eval": "eval_view"}
_SPLIT_WORDS = {"train": "the training split", "eval": "the evaluation split"}
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
    readers = dict(
        zip(
            SOURCES,
            (_resolve_tfds, _resolve_split_list, _resolve_image_folder, _resolve_cache),
            strict=True,
        )
    )
    if cfg.source not in readers:
        raise ConfigError(f"dataset.source={cfg.source!r} is unknown; use one of {SOURCES}.")
    if cfg.on_bad_file not in file_check.ON_BAD_FILE:
        raise ConfigError(
            f"dataset.on_bad_file={cfg.on_bad_file!r} is unknown; use one of "
            f"{file_check.ON_BAD_FILE}."
        )
    train, evals, counts, names = readers[cfg.source](cfg)
    bad: tuple[file_check.BadFile, ...] = ()
    if isinstance(train, IndexedSplit) and train.paths is not None:
        train, evals, bad = _checked_files(cfg, train, evals)
        counts = _counts(train, cfg.num_classes)
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
    resolved = ResolvedDataset(info=info, train=train, eval=evals, bad_files=bad)
    if cfg.cache:
        _RESOLVED[key] = resolved
    return resolved


def file_problem(cfg: Any, path: str, split: str, *, full: bool = False) -> str | None:
    """Why the image file `path` of `split` ("train" | "eval") cannot be read into its view,
    in words that follow the path; None when it can. `full` decodes it (`ncl-check-dataset`,
    and the pipeline naming a file that failed); otherwise a header check
    (`file_check.header_problem`)."""
    from ncl_jax.data import augment  # lazy: TensorFlow, which a cache source never loads

    field = SPLIT_VIEWS[split]
    view, size = getattr(cfg, field), cfg.image_size

    def size_rule(height: int, width: int) -> str | None:
        problem = augment.input_size_problem(view, size, height, width)
        return problem and f"{problem} (dataset.{field}, dataset.image_size={size})"

    check = file_check.decode_problem if full else file_check.header_problem
    return check(path, decode=_sources().decoded_size, size_rule=size_rule)


def _bad_files(cfg: Any, split: IndexedSplit, name: str, *, full: bool, threads: int):
    """(the split's distinct storage rows, their files, the bad ones): `file_problem` of every
    file the split reads, in `threads` threads."""
    rows = np.unique(split.rows)
    files = split.paths[rows]
    problem = functools.partial(file_problem, cfg, split=name, full=full)
    bad = file_check.find_bad_files(files, problem, what=_SPLIT_WORDS[name], threads=threads)
    return rows, files, bad


def _checked_files(cfg: Any, train: IndexedSplit, evals: IndexedSplit):
    """Every file of both splits header-checked: DataError naming the first bad one under
    on_bad_file=error, else the splits without their bad files, and those files."""
    kept, all_bad = [], []
    for split, name in ((train, "train"), (evals, "eval")):
        rows, files, bad = _bad_files(cfg, split, name, full=False, threads=file_check.THREADS)
        if bad and cfg.on_bad_file == "error":
            raise file_check.refusal(bad, _SPLIT_WORDS[name])
        if bad:
            bad_rows = rows[np.isin(files, [b.path for b in bad])]
            split = split.subset(np.flatnonzero(~np.isin(split.rows, bad_rows)))
            logging.warning(
                "dataset.on_bad_file=skip: left %d bad files out of %s (%d examples remain); "
                "training writes their list to WORKDIR/%s.",
                len(bad),
                _SPLIT_WORDS[name],
                len(split),
                file_check.BAD_FILES_NAME,
            )
        kept.append(split)
        all_bad.extend(bad)
    return kept[0], kept[1], tuple(all_bad)


def check_all_files(
    cfg: Any, *, threads: int = file_check.THREADS
) -> dict[str, tuple[int, list[file_check.BadFile]]]:
    """Every file the configured training and evaluation splits read (the long-tailed subset
    when imbalance_factor > 0), decoded once as the pipeline decodes it and held to its
    view's size rule, in `threads` threads: {"train" | "eval": (number of files, the bad
    ones)}. What `ncl-check-dataset` reports. Raises ConfigError for a TFDS source (records,
    not files) and what `resolve` raises for lists or folders that cannot be opened."""
    readers = {"split_list": _resolve_split_list, "image_folder": _resolve_image_folder}
    if cfg.source not in readers:
        raise ConfigError(
            f"dataset.source={cfg.source!r} has no image files to check: the check reads "
            "split_list and image_folder datasets; set --config.dataset.source."
        )
    train, evals, _, _ = readers[cfg.source](cfg)
    report = {}
    for split, name in ((train, "train"), (evals, "eval")):
        _, files, bad = _bad_files(cfg, split, name, full=True, threads=threads)
        report[name] = (len(files), bad)
    return report


def skipped_files(cfg: Any) -> tuple[file_check.BadFile, ...]:
    """The bad files `resolve` left out of the configured splits (on_bad_file=skip)."""
    return resolve(cfg).bad_files


def write_skipped_files(cfg: Any, workdir: str) -> str | None:
    """Writes WORKDIR/bad_files.txt (file_check.write_list) when files were left out, and
    returns its path; None (and nothing written) when none were."""
    bad = skipped_files(cfg)
    if not bad:
        return None
    path = os.path.join(workdir, file_check.BAD_FILES_NAME)
    file_check.write_list(path, bad)
    return path


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


def _long_tail_positions(labels: np.ndarray, cfg: Any) -> np.ndarray:
    """The positions the CIFAR-LT profile keeps when imbalance_factor > 0 (0 keeps all)."""
    if cfg.imbalance_factor == 0:
        return np.arange(len(labels))
    return long_tailed_indices(
        labels, cfg.imbalance_factor, seed=cfg.subset_seed, num_classes=cfg.num_classes
    )


def _long_tail(split: IndexedSplit, cfg: Any) -> IndexedSplit:
    """The split under the CIFAR-LT profile (`_long_tail_positions`)."""
    return split.subset(_long_tail_positions(split.labels, cfg))


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


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
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

        def long_tail(labels: np.ndarray) -> np.ndarray:  # before any image is decoded
            _check_labels(labels, cfg.num_classes, f"{cfg.name}/{cfg.train_split}")
            return _long_tail_positions(labels, cfg)

        train = sources.in_memory_split(builder, cfg.train_split, cache=cfg.cache, select=long_tail)
        evals = sources.in_memory_split(builder, cfg.eval_split, cache=cfg.cache)
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
