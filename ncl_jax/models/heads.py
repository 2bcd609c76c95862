"""Classifier and projection heads: linear, cosine (fixed scale), MoCo MLP."""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from ncl_jax.models.init import torch_default_bias, torch_default_kernel


def torch_dense(features: int, fan_in: int, name: str | None = None) -> nn.Dense:
    """nn.Linear with PyTorch's default init (weights and bias U(+-1/sqrt(fan_in)))."""
    return nn.Dense(
        features, kernel_init=torch_default_kernel, bias_init=torch_default_bias(fan_in), name=name
    )


class LinearHead(nn.Module):
    """`FC` classifier of the CIFAR configs."""

    num_classes: int

    @nn.compact
    def __call__(self, x):
        return torch_dense(self.num_classes, x.shape[-1], name="fc")(x.astype(jnp.float32))


class CosineHead(nn.Module):
    """scale * cos(x, w_c) + b_c with a fixed scale and a learnable bias initialised to 0.

    The official code has no epsilon in the norms; a 1e-12 floor only matters for an all-zero
    feature, where the official code returns NaN.
    """

    num_classes: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, x):
        x = x.astype(jnp.float32)
        w = self.param("kernel", torch_default_kernel, (x.shape[-1], self.num_classes))
        b = self.param("bias", nn.initializers.zeros, (self.num_classes,))
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        w = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-12)
        return self.scale * (x @ w) + b


class ProjectionMLP(nn.Module):
    """MoCo v2 head: Linear(d, d) - ReLU - Linear(d, dim), no BatchNorm."""

    dim: int

    @nn.compact
    def __call__(self, x):
        x = x.astype(jnp.float32)
        d = x.shape[-1]
        x = nn.relu(torch_dense(d, d, name="fc1")(x))
        return torch_dense(self.dim, d, name="fc2")(x)
