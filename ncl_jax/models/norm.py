"""BatchNorm as the official PyTorch backbones configure it, shared by every backbone."""

from __future__ import annotations

from typing import Any

from flax import linen as nn


def batch_norm(train: bool, axis_name: str | None, dtype: Any, name: str | None = None):
    """BatchNorm with PyTorch's defaults (momentum 0.1 -> Flax 0.9, eps 1e-5); `axis_name`
    synchronises batch statistics across devices (SyncBN)."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        axis_name=axis_name if train else None,
        dtype=dtype,
        name=name,
    )
