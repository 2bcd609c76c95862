"""Long-tailed subsets (the LDAM/PaCo CIFAR-LT procedure) and the DatasetInfo of a dataset.

numpy only, so class counts and group masks are available where TensorFlow is not installed.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ncl_jax.errors import ConfigError, DataError

GROUP_RULES = ("official", "paper")


def long_tailed_counts(n_max: int, num_classes: int, imbalance_factor: float) -> np.ndarray:
    """Images kept per class: n_c = int(n_max * (1/IF) ** (c / (C-1))), class 0 the head.

    Python floats, evaluated exactly as in LDAM-DRW / Cui et al., so the counts are
    bit-identical to theirs (CIFAR-10 IF100 -> 12,406 images).
    """
    if not imbalance_factor >= 1:
        raise DataError(
            f"imbalance_factor={imbalance_factor} is below 1; use n_max/n_min >= 1 "
            "(e.g. --config.dataset.imbalance_factor=100), or 0 to keep the split as it is."
        )
    if num_classes == 1:
        return np.array([n_max], np.int64)
    factor = 1.0 / float(imbalance_factor)
    counts = [int(float(n_max) * factor ** (c / (num_classes - 1.0))) for c in range(num_classes)]
    return np.asarray(counts, np.int64)


def long_tailed_indices(
    labels: np.ndarray,
    imbalance_factor: float,
    *,
    seed: int = 0,
    num_classes: int | None = None,
) -> np.ndarray:
    """Original positions kept in the long-tailed subset of a balanced training set.

    The LDAM-DRW / PaCo / RIDE procedure, so the subset is theirs image for image:
    np.random.seed(seed); then for each class c in label order, shuffle the positions of c and
    keep the first n_c (`long_tailed_counts`, n_max = the largest class). A private
    RandomState replays the global-seed stream without touching numpy's global state.

    Returns int64 positions in class order (all kept images of class 0 in their shuffled
    order, then class 1, ...), as in LDAM's re-built dataset. A class with fewer images than
    n_c keeps all of them.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"labels must be a non-empty 1-D integer array, got {labels.dtype}.")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if labels.min() < 0 or labels.max() >= num_classes:
        raise DataError(f"labels lie outside [0, {num_classes}); fix the labels or num_classes.")
    available = np.bincount(labels, minlength=num_classes)
    if (available == 0).any():
        empty = int(np.flatnonzero(available == 0)[0])
        raise DataError(f"class {empty} has no images in the balanced training set.")
    n_max = int(available.max())
    counts = long_tailed_counts(n_max, num_classes, imbalance_factor)
    if (counts == 0).any():
        empty = int(np.flatnonzero(counts == 0)[0])
        raise DataError(
            f"imbalance_factor={imbalance_factor} leaves class {empty} with 0 images "
            f"(n_max={n_max}); use an imbalance_factor <= {n_max}."
        )
    rng = np.random.RandomState(seed)
    kept = []
    for c in range(num_classes):
        positions = np.flatnonzero(labels == c)
        rng.shuffle(positions)
        kept.append(positions[: counts[c]])
    return np.concatenate(kept).astype(np.int64)


@dataclasses.dataclass(frozen=True, eq=False)
class DatasetInfo:
    """What training needs to know about the data before the first batch."""

    name: str
    num_classes: int
    class_counts: np.ndarray  # int64 [C] training images per class of the (long-tailed) subset
    num_train: int
    num_eval: int
    # Class names by label where the source has them (TFDS label names, image-folder names).
    class_names: tuple[str, ...] | None = None

    def group_masks(self, rule: str) -> dict[str, np.ndarray]:
        """Many / medium / few class masks (bool [C]) by training-image count.

        'official' (NCL code): many n >= 100, few n <= 20; 'paper' (Sec. 4.1): many n > 100,
        few n < 20; everything else is medium.
        """
        n = self.class_counts
        if rule == "official":
            many, few = n >= 100, n <= 20
        elif rule == "paper":
            many, few = n > 100, n < 20
        else:
            raise ConfigError(f"group_rule={rule!r} is unknown; use one of {GROUP_RULES}.")
        return {"many": many, "medium": ~(many | few), "few": few}
