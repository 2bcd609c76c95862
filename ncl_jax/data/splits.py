"""The two kinds of split a data source yields (numpy only): indexed, read by example index
(in memory or image files), and streamed (a TFDS split read in order)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class IndexedSplit:
    """Examples addressable by index: example i is `images[rows[i]]` or `paths[rows[i]]`."""

    labels: np.ndarray  # int64 [N]
    rows: np.ndarray  # int64 [N] storage row of each example
    images: np.ndarray | None = None  # uint8 [M, H, W, 3] decoded images (small datasets)
    paths: np.ndarray | None = None  # str [M] image files decoded in tf.data (large datasets)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> IndexedSplit:
        """The examples at positions `keep`, in that order (storage is shared, not copied)."""
        return dataclasses.replace(self, labels=self.labels[keep], rows=self.rows[keep])


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedSplit:
    """A TFDS split read as a stream; `labels_by_key` (from a list file) filters and relabels."""

    builder: Any
    split: str
    num_examples: int
    labels_by_key: dict[str, int] | None
    key_feature: str
    key_patterns: tuple[str, ...]

    def __len__(self) -> int:
        return self.num_examples
