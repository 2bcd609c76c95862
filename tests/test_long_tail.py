"""Long-tailed subsets (the LDAM procedure), class counts and many/medium/few groups."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from ncl_jax import data
from ncl_jax.errors import ConfigError, DataError
from tests.data_helpers import CIFAR10_IF50, CIFAR10_IF100, ldam_subset


@pytest.mark.parametrize(
    "classes, per_class, imbalance, first, last, total",
    [
        (10, 5000, 100, 5000, 50, 12_406),
        (10, 5000, 50, 5000, 100, 13_996),
        (100, 500, 100, 500, 5, 10_847),
        (100, 500, 50, 500, 10, 12_608),
    ],
)
def test_long_tailed_counts_match_published_profiles(
    classes, per_class, imbalance, first, last, total
):
    counts = data.long_tailed_counts(per_class, classes, imbalance)
    assert (counts[0], counts[-1], counts.sum()) == (first, last, total)
    assert np.all(np.diff(counts) <= 0)
    if classes == 10:
        assert counts.tolist() == (CIFAR10_IF100 if imbalance == 100 else CIFAR10_IF50)


@pytest.mark.parametrize("classes, per_class", [(10, 5000), (100, 500)])
@pytest.mark.parametrize("imbalance", [100, 50])
@pytest.mark.parametrize("seed", [0, 3])
def test_long_tailed_indices_equal_ldam_procedure(classes, per_class, imbalance, seed):
    labels = np.random.default_rng(7).permutation(np.repeat(np.arange(classes), per_class))
    state = np.random.get_state()[1].copy()
    kept = data.long_tailed_indices(labels, imbalance, seed=seed)
    assert np.array_equal(np.random.get_state()[1], state), "global numpy RNG must be untouched"
    assert np.array_equal(kept, ldam_subset(labels, 1.0 / imbalance, seed))
    counts = np.bincount(labels[kept], minlength=classes)
    assert counts.tolist() == data.long_tailed_counts(per_class, classes, imbalance).tolist()
    assert np.all(np.diff(labels[kept]) >= 0), "documented order: class by class"


def test_long_tailed_indices_rejects_bad_input():
    labels = np.repeat(np.arange(4), 10)
    with pytest.raises(DataError, match="below 1"):
        data.long_tailed_indices(labels, 0.5)
    with pytest.raises(DataError, match="class 3 with 0 images"):
        data.long_tailed_indices(labels, 11)
    with pytest.raises(DataError, match="class 2 has no images"):
        data.long_tailed_indices(labels[labels != 2], 2, num_classes=4)
    assert len(data.long_tailed_indices(labels, 10)) == 10 + 4 + 2 + 1


def test_group_masks_official_and_paper_thresholds():
    info = data.DatasetInfo("x", 6, np.array([101, 100, 50, 20, 19, 1]), 291, 60)
    official, paper = info.group_masks("official"), info.group_masks("paper")
    assert official["many"].tolist() == [1, 1, 0, 0, 0, 0]
    assert official["few"].tolist() == [0, 0, 0, 1, 1, 1]
    assert paper["many"].tolist() == [1, 0, 0, 0, 0, 0]
    assert paper["medium"].tolist() == [0, 1, 1, 1, 0, 0]
    assert paper["few"].tolist() == [0, 0, 0, 0, 1, 1]
    with pytest.raises(ConfigError, match="group_rule"):
        info.group_masks("median")


@pytest.mark.slow
def test_long_tail_and_info_import_without_tensorflow():
    code = (
        "import sys; from ncl_jax.data import DatasetInfo, long_tailed_counts; "
        "assert long_tailed_counts(500, 100, 100).sum() == 10847; "
        "assert 'tensorflow' not in sys.modules"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
