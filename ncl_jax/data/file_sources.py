"""Examples from files: split-list text files ("relative/path label" lines) and image folders
(one sub-folder per class), as `IndexedSplit`s of paths decoded later in tf.data."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np

from ncl_jax.data.splits import IndexedSplit
from ncl_jax.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def read_split_list(path: str, num_classes: int, field: str) -> tuple[list[str], np.ndarray]:
    """Parses "relative/path label" lines (ImageNet-LT / Places-LT style); leading '/' dropped."""
    if not os.path.isfile(path):
        raise DataError(
            f"dataset.{field}={path!r} does not exist; point --config.dataset.{field} at a "
            "text file of 'relative/path label' lines."
        )
    paths: list[str] = []
    labels: list[int] = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().rsplit(maxsplit=1)
            if len(parts) != 2 or not re.fullmatch(r"-?\d+", parts[1]):
                raise DataError(f"{path}:{lineno}: expected 'relative/path label', got {line!r}.")
            label = int(parts[1])
            if not 0 <= label < num_classes:
                raise DataError(
                    f"{path}:{lineno}: label {label} is outside [0, {num_classes}); fix the "
                    "list or --config.dataset.num_classes."
                )
            paths.append(parts[0].lstrip("/"))
            labels.append(label)
    if not paths:
        raise DataError(f"{path} lists no images; fill it or fix --config.dataset.{field}.")
    return paths, np.asarray(labels, np.int64)


def check_files_exist(root: str, rel_paths: Sequence[str], list_path: str) -> None:
    """Fails on the first listed file that is missing (one directory listing per folder)."""
    wanted: dict[str, set[str]] = {}
    for rel in rel_paths:
        full = os.path.join(root, rel)
        wanted.setdefault(os.path.dirname(full), set()).add(os.path.basename(full))
    missing: list[str] = []
    for folder, names in wanted.items():
        try:
            present = set(os.listdir(folder))
        except OSError:
            present = set()
        missing.extend(os.path.join(folder, n) for n in sorted(names - present))
    if missing:
        raise DataError(
            f"{list_path} names {missing[0]}, which does not exist ({len(missing)} listed files "
            "missing); fix --config.dataset.image_root or the list."
        )


def list_split(root: str, list_path: str, num_classes: int, field: str) -> IndexedSplit:
    """An indexed split of image files named by a split list, relative to `root`."""
    if not root or not os.path.isdir(root):
        raise DataError(
            f"dataset.image_root={root!r} is not a directory; set --config.dataset.image_root "
            f"to the folder the paths in {list_path} are relative to."
        )
    rel_paths, labels = read_split_list(list_path, num_classes, field)
    check_files_exist(root, rel_paths, list_path)
    paths = np.array([os.path.join(root, p) for p in rel_paths])
    return IndexedSplit(labels=labels, rows=np.arange(len(labels), dtype=np.int64), paths=paths)


def folder_split(folder: str, class_names: Sequence[str] | None = None):
    """An indexed split of <folder>/<class>/*.{jpg,jpeg,png}; classes sorted by name.

    Returns (split, class_names). `class_names` (from the training folder) must match.
    """
    if not os.path.isdir(folder):
        raise DataError(
            f"image folder {folder} does not exist; set --config.dataset.image_root so that "
            "<image_root>/<split>/<class>/*.jpg exists (split = train_split / eval_split)."
        )
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if not classes:
        raise DataError(f"image folder {folder} has no class folders; expected <class>/*.jpg.")
    if class_names is not None and classes != list(class_names):
        raise DataError(
            f"image folder {folder} has classes {classes[:5]}... that differ from the training "
            f"folder's {list(class_names)[:5]}...; give both splits the same class folders."
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        class_dir = os.path.join(folder, name)
        files = sorted(f for f in os.listdir(class_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(
                f"class folder {class_dir} holds no .jpg/.jpeg/.png images (class {label} would "
                "have 0 images); add images or remove the folder."
            )
        paths.extend(os.path.join(class_dir, f) for f in files)
        labels.extend([label] * len(files))
    split = IndexedSplit(
        labels=np.asarray(labels, np.int64),
        rows=np.arange(len(labels), dtype=np.int64),
        paths=np.array(paths),
    )
    return split, classes
