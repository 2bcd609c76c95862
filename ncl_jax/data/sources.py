"""Where examples come from: TFDS builders (split-list files and image folders:
`file_sources.py`).

Two kinds of split leave this module:
- `IndexedSplit`: random access by example index (CIFAR decoded into memory, or image file
  paths decoded later in tf.data). Epoch orders are derived from (seed, epoch) alone, so
  batches are identical whatever the number of processes, devices or threads.
- `StreamedSplit`: TFDS builders without random access (imagenet2012, places365_small,
  i_naturalist2018), read as a sharded, seeded-shuffled stream. Deterministic for a fixed
  (seed, epoch, process_count) only; exact cross-process-count determinism is a property of
  indexed sources.
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.error
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import requests
import tensorflow as tf
import tensorflow_datasets as tfds

from ncl_jax.data.choices import DOWNLOAD_VALUES
from ncl_jax.data.file_sources import read_split_list
from ncl_jax.data.splits import IndexedSplit, StreamedSplit
from ncl_jax.errors import ConfigError, DataError


def hide_accelerators_from_tf() -> None:
    """Keeps host-side TensorFlow off the GPUs, which belong to JAX."""
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # TF devices were already initialised by someone else; keep going
        pass


hide_accelerators_from_tf()

IN_MEMORY_BUILDERS = ("cifar10", "cifar100", "cifar10_jpeg")
# Streamed builders: feature naming each record's file, and regexes (same meaning in Python `re`
# and TF's RE2) that turn both TFDS names and list paths into one matching key.
STREAMED_BUILDERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "imagenet2012": ("file_name", (r"^.*/",)),
    "places365_small": (
        "filename",
        (r"^.*(data_256|data_large|val_256|val_large|test_256)/", r"^/+"),
    ),
    "i_naturalist2018": ("id", (r"^.*/", r"\.[^./]*$")),
}
NOT_DOWNLOADABLE = {
    "cifar10_jpeg": "it is a local build that TFDS cannot download",
    "imagenet2012": "TFDS needs the ImageNet tar files placed in its manual_dir first",
}
# Public and small (~170 MB each): fetched on first use under the default dataset.download="auto".
# The others are large (Places365 ~31 GB, iNaturalist 2018 ~120 GB) or manual, so they wait for
# an explicit download=True.
AUTO_DOWNLOAD = ("cifar10", "cifar100")
# What a failed fetch raises when the network or the source host is unreachable.
NETWORK_ERRORS = (
    requests.RequestException,
    urllib.error.URLError,
    socket.gaierror,
    ConnectionError,
    TimeoutError,
    tfds.download.DownloadError,
)
REACHABLE_TIMEOUT_S = 15.0


# ---------------------------------------------------------------------------------- decoding


def decode_image(data: tf.Tensor) -> tf.Tensor:
    """Decodes JPEG exactly like PIL/libjpeg (INTEGER_ACCURATE), other formats generically."""
    image = tf.cond(
        tf.io.is_jpeg(data),
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def decoded_size(data: bytes) -> tuple[int, int]:
    """(height, width) of file bytes decoded as the pipeline decodes them (`decode_image`);
    ValueError with TensorFlow's message, without its op and device prefixes, when they do
    not decode."""
    try:
        shape = decode_image(tf.constant(data)).shape
    except tf.errors.OpError as err:
        message = re.sub(r"\{\{[^}]*\}\}|\[Op:.*$", "", err.message, flags=re.S)
        raise ValueError(" ".join(message.split()).rstrip(".")) from None
    return int(shape[0]), int(shape[1])


# ---------------------------------------------------------------------------------- TFDS


def tfds_data_dir(cfg: Any) -> str | None:
    """config.dataset.data_dir, else $TFDS_DATA_DIR, else None (TFDS's own default)."""
    return cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or None


def download_mode(value: Any) -> str:
    """Normalises dataset.download: "auto", "true" or "false" (CLI strings or Python bools)."""
    mode = str(value).strip().lower()
    if mode not in DOWNLOAD_VALUES:
        raise ConfigError(
            f"dataset.download={value!r} is not valid; use auto (download only "
            f"{', '.join(AUTO_DOWNLOAD)}), True or False."
        )
    return mode


def should_download(name: str, download: Any) -> bool:
    """Whether a missing TFDS dataset `name` is downloaded under dataset.download=`download`."""
    mode = download_mode(download)
    return name in AUTO_DOWNLOAD if mode == "auto" else mode == "true"


def _download_size(builder: Any) -> str:
    """The total size of the builder's registered source files ("31.4 GB; "), or ""."""
    try:
        total = sum(int(info.size) for info in (builder.url_infos or {}).values())
    except Exception:  # noqa: BLE001 - only a hint in a message
        return ""
    return f"{total / 1e9:.1f} GB; " if total else ""


def _network_error(e: BaseException) -> BaseException | None:
    """The network failure behind `e` (itself or a cause), if any."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, NETWORK_ERRORS):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _first_line(e: BaseException, limit: int = 0) -> str:
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return line[: limit - 3] + "..." if limit and len(line) > limit else line


def _offline_error(name: str, searched: str, reason: str) -> DataError:
    return DataError(
        f"downloading TFDS {name!r} into {searched} failed ({reason}); without network "
        f"access, copy a prepared {name}/ folder (e.g. from ~/tensorflow_datasets on a machine "
        "that has one) and set TFDS_DATA_DIR or --config.dataset.data_dir to the folder holding "
        "it."
    )


def check_reachable(builder: Any, name: str, searched: str) -> None:
    """Fails in seconds when the source host is unreachable, not after TFDS's ~3 min of retries.

    One HEAD request to the first registered URL, through `requests` like TFDS (so proxies from
    the environment apply); HTTP status codes are left for TFDS to judge. Manual datasets
    (imagenet2012) read local files, so they are not checked.
    """
    urls = [url for url in (builder.url_infos or {}) if url.startswith("http")]
    if not urls or getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        return
    try:
        requests.head(urls[0], timeout=REACHABLE_TIMEOUT_S, allow_redirects=True).close()
    except requests.RequestException as e:
        host = urllib.parse.urlparse(urls[0]).netloc
        raise _offline_error(name, searched, f"{host} is unreachable: {type(e).__name__}") from None


def open_builder(cfg: Any) -> Any:
    """Opens a prepared TFDS builder, preparing it first when `should_download` says so."""
    name = cfg.name
    if name not in IN_MEMORY_BUILDERS and name not in STREAMED_BUILDERS:
        known = ", ".join((*IN_MEMORY_BUILDERS, *STREAMED_BUILDERS))
        raise ConfigError(
            f"dataset.name={name!r} is not a supported TFDS builder; use one of {known}, "
            "or --config.dataset.source=split_list / image_folder for files on disk."
        )
    data_dir = tfds_data_dir(cfg)
    searched = data_dir or str(tfds.core.constants.DATA_DIR)
    where = (
        f"TFDS dataset {name!r} is not prepared under {searched}; set TFDS_DATA_DIR or "
        f"--config.dataset.data_dir to the directory that holds {name}/"
    )
    download = should_download(name, cfg.download)
    if name in NOT_DOWNLOADABLE:
        how = f" ({name} cannot be downloaded with download=True: {NOT_DOWNLOADABLE[name]})."
    else:
        how = ", or pass --config.dataset.download=True to download it."
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise DataError(where + how) from None
    if not builder.is_prepared():
        if not download:
            if name not in NOT_DOWNLOADABLE and name not in AUTO_DOWNLOAD:
                how = (
                    ", or pass --config.dataset.download=True to download it "
                    f"({_download_size(builder)}large datasets are not downloaded automatically)."
                )
            raise DataError(where + how)
        try:
            check_reachable(builder, name, searched)
            builder.download_and_prepare()
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - any TFDS failure becomes one clear line
            network = _network_error(e)
            if network is not None:
                raise _offline_error(name, searched, _first_line(network, 200)) from e
            reason = _first_line(e)
            manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
            if manual and reason.endswith("instructions:"):  # TFDS puts them on later lines
                reason += " " + " ".join(manual.split())
            raise DataError(
                f"TFDS could not download/prepare {name!r} into {searched}: {reason}"
            ) from e
    return builder


def check_builder(builder: Any, cfg: Any) -> None:
    """Class count and split names must agree with the config before anything is read."""
    builder_classes = builder.info.features["label"].num_classes
    if builder_classes != cfg.num_classes:
        raise ConfigError(
            f"dataset.num_classes={cfg.num_classes} but TFDS {builder.name!r} has "
            f"{builder_classes} classes; set --config.dataset.num_classes={builder_classes}."
        )
    splits = sorted(builder.info.splits.keys())
    for field in ("train_split", "eval_split"):
        split = getattr(cfg, field)
        if split not in splits:
            raise ConfigError(
                f"dataset.{field}={split!r} is not a split of {builder.name!r} (it has {splits}); "
                f"set --config.dataset.{field} to one of them."
            )


def original_order(ids: Sequence[str], where: str) -> np.ndarray:
    """Positions that sort records back into the release order of their ids ('train_00042')."""
    matches = [re.fullmatch(r"(.*?)(\d+)", s) for s in ids]
    if all(matches):
        keys: np.ndarray = np.array([int(m.group(2)) for m in matches], np.int64)
    else:
        keys = np.array(ids)
    if len(np.unique(keys)) != len(keys):
        raise DataError(
            f"{where}: record ids are not unique, so the original order (and the LDAM subset) "
            "cannot be recovered; re-prepare the dataset."
        )
    return np.argsort(keys, kind="stable")


# The encoded records of small TFDS splits, kept for the life of the process (`cache`):
# reading them is the cheap part, decoding is per run, of the rows a run uses only.
_RECORD_CACHE: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]] = {}


def _encoded_records(builder: Any, split: str, *, cache: bool) -> tuple[np.ndarray, np.ndarray]:
    """(encoded images: bytes objects [N], labels: int64 [N]) of a small TFDS split, in the
    release order of its record ids. Raises DataError for an empty split or duplicate ids."""
    key = (str(builder.data_dir), builder.name, split)
    if key in _RECORD_CACHE:
        return _RECORD_CACHE[key]
    decoders = {"image": tfds.decode.SkipDecoding()}
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    has_id = "id" in builder.info.features
    encoded: list[bytes] = []
    labels, ids = [], []
    for batch in ds.batch(4096).as_numpy_iterator():
        encoded.extend(batch["image"])
        labels.append(batch["label"])
        if has_id:
            ids.extend(i.decode() for i in batch["id"])
    where = f"TFDS {builder.name}/{split}"
    if not encoded:
        raise DataError(f"{where} has no examples; re-prepare the dataset.")
    records = np.empty(len(encoded), dtype=object)
    records[:] = encoded
    labels_np = np.concatenate(labels).astype(np.int64)
    if has_id:
        order = original_order(ids, where)
        records, labels_np = records[order], labels_np[order]
    if cache:
        _RECORD_CACHE[key] = (records, labels_np)
    return records, labels_np


def _decode_all(records: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3]: `decode_image` of each encoded image (JPEG exactly as PIL), in
    order, decoded in parallel."""
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(records.tolist(), tf.string))
    ds = ds.map(decode_image, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return np.concatenate(list(ds.batch(4096).as_numpy_iterator()))


def in_memory_split(
    builder: Any,
    split: str,
    *,
    cache: bool,
    select: Callable[[np.ndarray], np.ndarray] | None = None,
) -> IndexedSplit:
    """A small TFDS split decoded into memory, in release order: the examples at positions
    `select(labels)` (e.g. the long-tailed subset; every example when None), and only their
    images decoded, so the storage holds exactly them (example i is `images[i]`)."""
    records, labels = _encoded_records(builder, split, cache=cache)
    keep = np.arange(len(labels)) if select is None else np.asarray(select(labels), np.int64)
    return IndexedSplit(
        labels=labels[keep],
        rows=np.arange(len(keep), dtype=np.int64),
        images=_decode_all(records[keep]),
    )


def load_tfds_arrays(builder: Any, split: str, *, cache: bool) -> tuple[np.ndarray, np.ndarray]:
    """Every image of a small TFDS split decoded (uint8 [N, H, W, 3]) and its labels (int64
    [N]), in release order; `cache` keeps the encoded records for the process."""
    whole = in_memory_split(builder, split, cache=cache)
    return whole.images, whole.labels


def match_key(name: str, patterns: Sequence[str]) -> str:
    """The matching key of a list path or TFDS file name (Python twin of `tf_match_key`)."""
    for pattern in patterns:
        name = re.sub(pattern, "", name, count=1)
    return name


def tf_match_key(name: tf.Tensor, patterns: Sequence[str]) -> tf.Tensor:
    """The matching key of a TFDS file name inside tf.data (TF twin of `match_key`)."""
    for pattern in patterns:
        name = tf.strings.regex_replace(name, pattern, "", replace_global=False)
    return name


def streamed_split(builder: Any, split: str, list_path: str, num_classes: int, field: str):
    """A streamed TFDS split, optionally restricted to (and labelled by) a list file."""
    key_feature, patterns = STREAMED_BUILDERS[builder.name]
    if not list_path:
        num = builder.info.splits[split].num_examples
        return StreamedSplit(builder, split, num, None, key_feature, patterns)

    paths, labels = read_split_list(list_path, num_classes, field)
    labels_by_key: dict[str, int] = {}
    for path, label in zip(paths, labels.tolist(), strict=True):
        key = match_key(path, patterns)
        if labels_by_key.setdefault(key, label) != label:
            raise DataError(
                f"{list_path} gives {key!r} two different labels; remove the duplicate line."
            )
    return StreamedSplit(builder, split, len(labels_by_key), labels_by_key, key_feature, patterns)


def builder_label_counts(builder: Any, split: str, num_classes: int) -> np.ndarray:
    """Images per class of a TFDS split from one pass over its labels (images not decoded).

    The result is cached as a small JSON next to the prepared data when that directory is
    writable, so the pass (minutes for iNaturalist) runs once.
    """
    path = os.path.join(str(builder.data_dir), f"ncl_jax_class_counts.{split}.json")
    try:
        with open(path) as f:
            counts = np.asarray(json.load(f)["counts"], np.int64)
        if counts.shape == (num_classes,):
            return counts
    except (OSError, ValueError, KeyError):
        pass
    decoders = tfds.decode.PartialDecoding({"label": True})
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    counts = np.zeros(num_classes, np.int64)
    for labels in ds.map(lambda ex: ex["label"]).batch(65536).as_numpy_iterator():
        labels = labels[(labels >= 0) & (labels < num_classes)]
        counts += np.bincount(labels, minlength=num_classes)
    try:
        with open(path, "w") as f:
            json.dump({"split": split, "counts": counts.tolist()}, f)
    except OSError:
        pass  # read-only data directory: recount next time
    return counts
