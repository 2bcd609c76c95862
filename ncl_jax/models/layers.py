"""Convolution and BatchNorm as the official PyTorch backbones configure them, for every
backbone."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
from flax import linen as nn


class BackboneModule(nn.Module):
    """The settings every backbone and block carries, as keyword-only fields (so subclasses
    can declare required fields first): the compute dtype and the SyncBN axis."""

    _: dataclasses.KW_ONLY
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None


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


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    *,
    kernel_init: Any,
    dtype: Any,
    name: str,
    groups: int = 1,
):
    """Bias-free kernel x kernel convolution with PyTorch's symmetric padding kernel // 2."""
    pad = kernel // 2
    return nn.Conv(
        features,
        (kernel, kernel),
        (stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        feature_group_count=groups,
        kernel_init=kernel_init,
        dtype=dtype,
        name=name,
    )
