"""Which test class distributions the test-agnostic evaluation scores (the SADE / BalPoE
protocol): their names (forward<IF>, uniform, backward<IF>) and flags, their per-class counts,
and their images: for a TFDS source, seeded nested subsets of the evaluation split; for a
split-list dataset, SADE's list files. Scoring on them is `test_distributions`.
"""

from __future__ import annotations

import os
import re

import numpy as np
from absl import flags

from ncl_jax.data.file_sources import read_split_list
from ncl_jax.data.long_tail import long_tailed_counts
from ncl_jax.errors import ConfigError, DataError

# The eleven distributions of SADE (NeurIPS 2022) and BalPoE (CVPR 2023), in plotting order.
STANDARD = (
    "forward50",
    "forward25",
    "forward10",
    "forward5",
    "forward2",
    "uniform",
    "backward2",
    "backward5",
    "backward10",
    "backward25",
    "backward50",
)
AGNOSTIC = "agnostic"  # --test_distributions=agnostic: all of STANDARD
_NAME = re.compile(r"(forward|backward)(\d+(?:\.\d+)?)|uniform")


def define_distribution_flags() -> None:
    """The test-agnostic flags of ncl_jax.evaluate and ncl_jax.analyze (absl)."""
    flags.DEFINE_string(
        "test_distributions",
        None,
        "Test class distributions to score: 'agnostic' (forward50 ... uniform ... backward50) "
        "or a comma list such as forward50,uniform,backward10.",
    )
    flags.DEFINE_integer(
        "distribution_seed", 0, "Seed of the per-class image choice of TFDS distributions."
    )
    flags.DEFINE_string(
        "test_distributions_dir",
        None,
        "Split-list datasets: folder of SADE list files <Dataset>_<distribution>.txt.",
    )


def parse_test_distributions(spec: str | None) -> tuple[str, ...] | None:
    """`agnostic` or a comma list of forward<IF> / uniform / backward<IF> (IF > 1) ->
    distribution names in plotting order (forward, largest IF first; uniform; backward);
    None for no spec. ConfigError naming the bad entry."""
    if not spec:
        return None
    if spec.strip() == AGNOSTIC:
        return STANDARD
    names = [s.strip() for s in spec.split(",") if s.strip()]
    for name in names:
        match = _NAME.fullmatch(name)
        if match is None or (match.group(2) and not float(match.group(2)) > 1):
            raise ConfigError(
                f"--test_distributions: {name!r} is not a test distribution; use 'agnostic' or "
                "a comma list of forward<IF>, uniform, backward<IF> with IF > 1 (e.g. "
                "forward50,uniform,backward10)."
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"--test_distributions={spec} names a distribution twice.")
    return tuple(sorted(names, key=_order))


def imbalance(name: str) -> float:
    """Signed imbalance factor: +IF for forward<IF>, -IF for backward<IF>, 1 for uniform."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ConfigError(f"{name!r} is not a test distribution.")
    if name == "uniform":
        return 1.0
    factor = float(match.group(2))
    return factor if match.group(1) == "forward" else -factor


def _order(name: str) -> float:
    value = imbalance(name)
    return -value if value > 1 else (0.0 if value == 1 else -value)


def distribution_counts(name: str, available: np.ndarray) -> np.ndarray:
    """Images per class [C] of a distribution drawn from an evaluation split holding
    `available` [C] images per class: `long_tailed_counts(min(available), C, IF)`, reversed for
    backward; uniform keeps min(available) of every class. DataError if a class would get 0."""
    available = np.asarray(available, np.int64)
    n_max = int(available.min())
    value = imbalance(name)
    counts = long_tailed_counts(n_max, len(available), abs(value))
    if value < 0:
        counts = counts[::-1].copy()
    if (counts == 0).any():
        raise DataError(
            f"test distribution {name} leaves class {int(np.flatnonzero(counts == 0)[0])} with "
            f"0 images (the evaluation split has {n_max} of its smallest class); use a smaller "
            "imbalance factor."
        )
    return counts


def select_subsets(labels: np.ndarray, names, seed: int, num_classes: int) -> dict:
    """{name: int64 positions into the evaluation split} for each distribution: class by
    class, the first n_c (`distribution_counts`) of one permutation of that class's positions
    drawn from np.random.default_rng(seed) (classes in label order), sorted. Deterministic in
    (labels, seed); independent of which other distributions are asked for."""
    labels = np.asarray(labels)
    available = np.bincount(labels, minlength=num_classes)
    if (available == 0).any():
        raise DataError(
            f"class {int(np.flatnonzero(available == 0)[0])} has no evaluation image; test "
            "distributions need every class in the evaluation split."
        )
    rng = np.random.default_rng(seed)
    shuffled = [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]
    subsets = {}
    for name in names:
        counts = distribution_counts(name, available)
        kept = [shuffled[c][: counts[c]] for c in range(num_classes)]
        subsets[name] = np.sort(np.concatenate(kept)).astype(np.int64)
    return subsets


def list_file(directory: str, name: str) -> str:
    """The list file of distribution `name` in `directory`: SADE names them
    `<Dataset>_<name>.txt` (e.g. ImageNet_LT_backward10.txt); `<name>.txt` is accepted too.
    DataError naming the file when there is none (or more than one)."""
    try:
        entries = sorted(os.listdir(directory))
    except OSError:
        raise DataError(
            f"--test_distributions_dir={directory} is not a readable directory; point it at "
            "the folder of SADE-style list files (<Dataset>_<distribution>.txt)."
        ) from None
    found = [e for e in entries if e == f"{name}.txt" or e.endswith(f"_{name}.txt")]
    if len(found) != 1:
        what = "no file" if not found else f"{len(found)} files ({', '.join(found)})"
        raise DataError(
            f"{os.path.join(directory, '<Dataset>_' + name + '.txt')}: {what} for test "
            f"distribution {name} in {directory}; add one 'relative/path label' list per "
            "distribution, or leave it out of --test_distributions."
        )
    return os.path.join(directory, found[0])


def read_list_files(directory: str, names, num_classes: int):
    """The distributions of a split-list dataset: (paths [N], labels [N], {name: positions})
    over the union of the listed images, each image once (first appearance order), so one
    pass over the union scores every distribution. Raises DataError for a missing file or an
    image listed with two labels."""
    files = {name: list_file(directory, name) for name in names}
    index: dict[str, int] = {}
    labels: list[int] = []
    subsets = {}
    for name, path in files.items():
        rel_paths, file_labels = read_split_list(path, num_classes, "test_distributions_dir")
        positions = []
        for rel, label in zip(rel_paths, file_labels, strict=True):
            if rel not in index:
                index[rel] = len(labels)
                labels.append(int(label))
            elif labels[index[rel]] != label:
                raise DataError(f"{path} lists {rel} as class {label}, another list otherwise.")
            positions.append(index[rel])
        subsets[name] = np.asarray(positions, np.int64)
    return list(index), np.asarray(labels, np.int64), subsets
