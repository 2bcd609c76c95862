"""ResNet-50 / ResNet-152 / ResNeXt-50 (32x4d) as in the official code and torchvision.

Bottleneck blocks with the stride on the 3x3 conv (v1.5), projection shortcuts when the shape
changes, PyTorch's default conv init (the official code sets none), 2048-d pooled feature.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from ncl_jax.models.init import torch_default_kernel
from ncl_jax.models.layers import BackboneModule, conv, norm_for

STAGE_SIZES = {
    "resnet50": (3, 4, 6, 3),
    "resnet152": (3, 8, 36, 3),
    "resnext50_32x4d": (3, 4, 6, 3),
}
GROUPS = {"resnet50": (1, 64), "resnet152": (1, 64), "resnext50_32x4d": (32, 4)}


class Bottleneck(BackboneModule):
    """1x1 (width) - 3x3 (width, `groups` groups, stride) - 1x1 (4 planes), each with BN."""

    planes: int
    width: int  # channels of the 3x3 conv: planes * width_per_group / 64 * groups
    stride: int = 1
    groups: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        out_ch = self.planes * 4
        convk = lambda feat, k, s, name, groups=1: conv(
            feat, k, s, kernel_init=torch_default_kernel, dtype=self.dtype, name=name, groups=groups
        )
        bn = lambda name: norm_for(self, train, name)
        y = nn.relu(bn("bn1")(convk(self.width, 1, 1, "conv1")(x)))
        y = nn.relu(bn("bn2")(convk(self.width, 3, self.stride, "conv2", self.groups)(y)))
        y = bn("bn3")(convk(out_ch, 1, 1, "conv3")(y))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != out_ch:
            shortcut = bn("downsample_bn")(convk(out_ch, 1, self.stride, "downsample_conv")(x))
        return nn.relu(y + shortcut)


class ResNet(BackboneModule):
    """ImageNet-style ResNet/ResNeXt; `stage_sizes` and `width` shrink it for tests."""

    stage_sizes: tuple[int, ...] = (3, 4, 6, 3)
    width: int = 64
    groups: int = 1
    width_per_group: int = 64

    @nn.compact
    def __call__(self, x, train: bool):
        stem = conv(
            self.width, 7, 2, kernel_init=torch_default_kernel, dtype=self.dtype, name="conv1"
        )
        x = nn.relu(norm_for(self, train, "bn1")(stem(x)))
        x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        for stage, blocks in enumerate(self.stage_sizes):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                planes = self.width * 2**stage
                x = Bottleneck(
                    planes,
                    int(planes * (self.width_per_group / 64.0)) * self.groups,
                    stride,
                    self.groups,
                    **self.shared_settings(),
                    name=f"layer{stage + 1}_block{block + 1}",
                )(x, train)
        return jnp.mean(x, axis=(1, 2))
