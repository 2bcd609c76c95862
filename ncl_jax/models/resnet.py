"""ResNet-50 / ResNet-152 / ResNeXt-50 (32x4d) as in the official code and torchvision.

Bottleneck blocks with the stride on the 3x3 conv (v1.5), projection shortcuts when the shape
changes, PyTorch's default conv init (the official code sets none), 2048-d pooled feature.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import linen as nn

from ncl_jax.models.init import torch_default_kernel
from ncl_jax.models.norm import batch_norm

STAGE_SIZES = {
    "resnet50": (3, 4, 6, 3),
    "resnet152": (3, 8, 36, 3),
    "resnext50_32x4d": (3, 4, 6, 3),
}
GROUPS = {"resnet50": (1, 64), "resnet152": (1, 64), "resnext50_32x4d": (32, 4)}


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    groups: int = 1
    width_per_group: int = 64
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool):
        width = int(self.planes * (self.width_per_group / 64.0)) * self.groups
        out_ch = self.planes * 4
        conv = lambda feat, k, s, name, groups=1: nn.Conv(
            feat,
            (k, k),
            (s, s),
            padding=((k // 2, k // 2),) * 2,
            use_bias=False,
            feature_group_count=groups,
            kernel_init=torch_default_kernel,
            dtype=self.dtype,
            name=name,
        )
        bn = lambda name: batch_norm(train, self.bn_axis_name, self.dtype, name)
        y = nn.relu(bn("bn1")(conv(width, 1, 1, "conv1")(x)))
        y = nn.relu(bn("bn2")(conv(width, 3, self.stride, "conv2", self.groups)(y)))
        y = bn("bn3")(conv(out_ch, 1, 1, "conv3")(y))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_ch:
            shortcut = bn("downsample_bn")(conv(out_ch, 1, self.stride, "downsample_conv")(x))
        return nn.relu(y + shortcut)


class ResNet(nn.Module):
    """ImageNet-style ResNet/ResNeXt; `stage_sizes` and `width` shrink it for tests."""

    stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    groups: int = 1
    width_per_group: int = 64
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None

    @nn.compact
    def __call__(self, x, train: bool):
        x = nn.Conv(
            self.width,
            (7, 7),
            (2, 2),
            padding=((3, 3), (3, 3)),
            use_bias=False,
            kernel_init=torch_default_kernel,
            dtype=self.dtype,
            name="conv1",
        )(x)
        x = nn.relu(batch_norm(train, self.bn_axis_name, self.dtype, "bn1")(x))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for stage, blocks in enumerate(self.stage_sizes):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = Bottleneck(
                    self.width * 2**stage,
                    stride,
                    self.groups,
                    self.width_per_group,
                    self.dtype,
                    self.bn_axis_name,
                    name=f"layer{stage + 1}_block{block + 1}",
                )(x, train)
        return jnp.mean(x, axis=(1, 2))
