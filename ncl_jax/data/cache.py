"""A prepared long-tailed dataset in one file, read with numpy alone (no TensorFlow).

`write_cache` stores what `datasets.resolve` produced on a machine with TFDS: the training
rows of the long-tailed subset (in subset order, as uint8 images), the whole evaluation
split, class names and training counts, the subset parameters and a SHA-256 checksum of the
arrays. `read_cache` restores it where TensorFlow is absent (the accelerator images) and
verifies the checksum. The file is an `.npz` (numpy's zip of arrays) whose image arrays are
xz streams with a byte-delta filter over the 3 channels: CIFAR pixels compress poorly with
zip's deflate (CIFAR-10-LT IF100 would stay above 60 MB), much better as differences of
neighbouring pixels; `lzma` is in Python's standard library, so numpy is still all a reader
needs. Sizes are measured in docs/data.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import lzma
import os
from typing import Any

import numpy as np

from ncl_jax.data.choices import CACHE_SOURCE
from ncl_jax.errors import ConfigError, DataError

SOURCE = CACHE_SOURCE  # the dataset.source value that reads a cache
FORMAT = "ncl_jax.prepared_dataset.v1"
_IMAGES = ("train_images", "eval_images")
_ARRAYS = (*_IMAGES, "train_labels", "eval_labels", "class_counts")
# Delta over 3 bytes = each channel minus the same channel of the left neighbour (HWC uint8).
_FILTERS = [{"id": lzma.FILTER_DELTA, "dist": 3}, {"id": lzma.FILTER_LZMA2, "preset": 6}]
# Subset parameters a cache records and a config must match.
SUBSET_FIELDS = ("num_classes", "imbalance_factor", "subset_seed", "train_split", "eval_split")


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedDataset:
    """The arrays of a cache: images uint8 [N, H, W, 3], labels int64 [N], class_counts int64
    [C]; `params` the subset parameters and source it was built from."""

    train_images: np.ndarray
    train_labels: np.ndarray
    eval_images: np.ndarray
    eval_labels: np.ndarray
    class_counts: np.ndarray
    class_names: tuple[str, ...] | None
    params: dict[str, Any]

    def check_matches(self, cfg: Any) -> None:
        """Raises ConfigError when the dataset config asks for another subset than this one."""
        for field in SUBSET_FIELDS:
            want, have = getattr(cfg, field), self.params[field]
            if (float(want) != float(have)) if field == "imbalance_factor" else want != have:
                raise ConfigError(
                    f"dataset.{field}={want!r} but the cache {cfg.cache_path} holds {have!r}; "
                    f"set --config.dataset.{field}={have!r} or write a cache for this subset."
                )


def checksum(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 (hex) over every array's name, dtype, shape and bytes, names sorted."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def write_cache(path: str, resolved: Any, cfg: Any, *, overwrite: bool = False) -> int:
    """Writes the `datasets.ResolvedDataset` of dataset config `cfg` to `path` (atomically:
    a temporary file renamed over it) and returns its size in bytes. Raises DataError for a
    streamed or file-path split (only decoded in-memory splits can be cached) and ConfigError
    when `path` exists and not `overwrite`."""
    if os.path.exists(path) and not overwrite:
        raise ConfigError(f"{path} exists; pass --overwrite to replace it, or choose --out.")
    splits = {"train": resolved.train, "eval": resolved.eval}
    arrays: dict[str, np.ndarray] = {}
    for name, split in splits.items():
        if getattr(split, "images", None) is None:
            raise DataError(
                f"the {name} split of {cfg.name!r} is not decoded into memory; only small "
                "in-memory datasets (CIFAR) can be cached."
            )
        arrays[f"{name}_images"] = np.ascontiguousarray(split.images[split.rows], np.uint8)
        arrays[f"{name}_labels"] = np.asarray(split.labels, np.int64)
    arrays["class_counts"] = np.asarray(resolved.info.class_counts, np.int64)
    params = {field: getattr(cfg, field) for field in SUBSET_FIELDS}
    params["imbalance_factor"] = float(params["imbalance_factor"])
    header = {
        "format": FORMAT,
        "params": {**params, "name": cfg.name},
        "class_names": list(resolved.info.class_names or []) or None,
        "shapes": {k: list(arrays[k].shape) for k in _IMAGES},
        "checksum": checksum(arrays),
    }
    stored = {k: v for k, v in arrays.items() if k not in _IMAGES}
    for key in _IMAGES:
        packed = lzma.compress(arrays[key].tobytes(), format=lzma.FORMAT_XZ, filters=_FILTERS)
        stored[f"{key}_xz"] = np.frombuffer(packed, np.uint8)
    stored["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    temporary = f"{path}.partial"
    with open(temporary, "wb") as f:
        np.savez(f, **stored)  # the images are compressed already; zip stores them as they are
    os.replace(temporary, path)
    return os.path.getsize(path)


def read_cache(path: str) -> PreparedDataset:
    """The cache at `path`, checksum verified. Raises ConfigError for an unset or missing
    path and DataError for a file that is not a cache, or whose arrays do not match their
    checksum (a damaged or altered file)."""
    if not path:
        raise ConfigError(
            "dataset.source='cache' needs dataset.cache_path; write one with "
            "`python -m ncl_jax.cache_dataset --config=... --out=PATH` and pass "
            "--config.dataset.cache_path=PATH."
        )
    if not os.path.isfile(path):
        raise ConfigError(f"dataset.cache_path={path!r} does not exist; write it first.")
    try:
        with open(path, "rb") as f, np.load(io.BytesIO(f.read())) as stored:
            header = json.loads(stored["header"].tobytes().decode())
            arrays = {k: stored[k] for k in _ARRAYS if k not in _IMAGES}
            for key in _IMAGES:
                raw = lzma.decompress(stored[f"{key}_xz"].tobytes())
                arrays[key] = np.frombuffer(raw, np.uint8).reshape(header["shapes"][key])
    except (OSError, ValueError, KeyError, EOFError, lzma.LZMAError) as err:
        raise DataError(f"{path} is not a readable ncl_jax dataset cache ({err}).") from None
    if header.get("format") != FORMAT:
        raise DataError(f"{path} has format {header.get('format')!r}, not {FORMAT!r}.")
    if checksum(arrays) != header["checksum"]:
        raise DataError(
            f"{path} fails its checksum: the file is damaged or was altered; write it again "
            "with ncl_jax.cache_dataset."
        )
    names = header["class_names"]
    return PreparedDataset(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"],
        eval_images=arrays["eval_images"],
        eval_labels=arrays["eval_labels"],
        class_counts=arrays["class_counts"],
        class_names=tuple(names) if names else None,
        params=header["params"],
    )
