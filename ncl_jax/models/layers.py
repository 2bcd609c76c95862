"""Convolution and BatchNorm as the official PyTorch backbones configure them, for every
backbone."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn


class BackboneModule(nn.Module):
    """The settings every backbone and block carries, as keyword-only fields (so subclasses
    can declare required fields first): the compute dtype, the SyncBN axis and PyTorch's
    unbiased running variance."""

    _: dataclasses.KW_ONLY
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    bn_unbiased_variance: bool = False

    def shared_settings(self) -> dict[str, Any]:
        """These fields, for passing on to child blocks."""
        return {
            "dtype": self.dtype,
            "bn_axis_name": self.bn_axis_name,
            "bn_unbiased_variance": self.bn_unbiased_variance,
        }


class TorchBatchNorm(nn.BatchNorm):
    """nn.BatchNorm whose running variance can follow PyTorch: updated with the UNBIASED batch
    variance, var_b * n / (n - 1), n = examples x positions per channel over the whole
    (synchronised) batch, while normalising with the biased one as both libraries do. Flax
    has no such option; the correction is exact because its update is linear in var_b."""

    unbiased_variance: bool = False

    @nn.compact
    def __call__(self, x, use_running_average=None, *, mask=None):
        frozen = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        if not self.unbiased_variance or frozen or self.is_initializing():
            return super().__call__(x, use_running_average, mask=mask)
        old = self.get_variable("batch_stats", "var")
        y = super().__call__(x, use_running_average, mask=mask)
        new = self.get_variable("batch_stats", "var")
        n = x.size // x.shape[-1]
        if self.axis_name is not None:
            n = n * jax.lax.psum(1, self.axis_name)
        # new = m old + (1 - m) v_b, so the PyTorch update m old + (1 - m) v_b n / (n - 1)
        # equals new + (new - m old) / (n - 1).
        self.put_variable("batch_stats", "var", new + (new - self.momentum * old) / (n - 1))
        return y


def batch_norm(
    train: bool,
    axis_name: str | None,
    dtype: Any,
    name: str | None = None,
    *,
    unbiased_variance: bool = False,
):
    """BatchNorm with PyTorch's defaults (momentum 0.1 -> Flax 0.9, eps 1e-5); `axis_name`
    synchronises batch statistics across devices (SyncBN); `unbiased_variance` updates the
    running variance as PyTorch does (TorchBatchNorm)."""
    return TorchBatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        axis_name=axis_name if train else None,
        dtype=dtype,
        name=name,
        unbiased_variance=unbiased_variance,
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


def norm_for(module: BackboneModule, train: bool, name: str):
    """A BatchNorm child named `name` with `module`'s settings (dtype, SyncBN axis, variance)."""
    return batch_norm(
        train,
        module.bn_axis_name,
        module.dtype,
        name,
        unbiased_variance=module.bn_unbiased_variance,
    )
