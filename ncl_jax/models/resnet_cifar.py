"""ResNet-32 for CIFAR exactly as the official NCL backbone (`res32_cifar`).

3 stages of basic blocks (16/32/64 channels), option-A shortcuts (stride-2 subsampling plus
zero channel padding, no projection convs), bias-free convs with kaiming-normal fan-in init,
global average pooling to a 64-d feature. 463,504 parameters with the defaults.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from ncl_jax.models.init import kaiming_normal_fan_in
from ncl_jax.models.layers import BackboneModule, conv, norm_for


class BasicBlockA(BackboneModule):
    """conv3x3-BN-ReLU-conv3x3-BN + option-A shortcut, then ReLU."""

    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x, train: bool):
        conv3x3 = lambda s, name: conv(
            self.planes, 3, s, kernel_init=kaiming_normal_fan_in, dtype=self.dtype, name=name
        )
        bn = lambda name: norm_for(self, train, name)
        y = nn.relu(bn("bn1")(conv3x3(self.stride, "conv1")(x)))
        y = bn("bn2")(conv3x3(1, "conv2")(y))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.planes:
            pad = self.planes // 4  # option A: subsample, then zero-pad planes//4 on each side
            shortcut = jnp.pad(x[:, ::2, ::2, :], ((0, 0), (0, 0), (0, 0), (pad, pad)))
        return nn.relu(y + shortcut)


class ResNetCifar(BackboneModule):
    """ResNet-(6n+2) for 32x32 inputs; `blocks_per_stage=5` is ResNet-32."""

    blocks_per_stage: int = 5
    width: int = 16

    @nn.compact
    def __call__(self, x, train: bool):
        stem = conv(
            self.width, 3, kernel_init=kaiming_normal_fan_in, dtype=self.dtype, name="conv1"
        )
        x = nn.relu(norm_for(self, train, "bn1")(stem(x)))
        for stage, mult in enumerate((1, 2, 4)):
            for block in range(self.blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                x = BasicBlockA(
                    self.width * mult,
                    stride,
                    **self.shared_settings(),
                    name=f"stage{stage + 1}_block{block + 1}",
                )(x, train)
        return jnp.mean(x, axis=(1, 2))
