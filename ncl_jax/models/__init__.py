"""Models: backbones, heads and the stacked K-expert wrapper."""

from __future__ import annotations

import jax.numpy as jnp

from ncl_jax.models.experts import (
    BACKBONES,
    STRATEGIES,
    Expert,
    apply_stacked,
    init_stacked,
    resolve_strategy,
    stacked,
)
from ncl_jax.variants import resolve_config

__all__ = [
    "BACKBONES",
    "STRATEGIES",
    "Expert",
    "apply_stacked",
    "build_expert",
    "init_stacked",
    "resolve_strategy",
    "stacked",
]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build_expert(config, *, bn_axis_name: str | None = None, with_projector: bool | None = None):
    """One expert from a config (model, dataset, moco sections)."""
    m = config.model
    if m.dtype not in _DTYPES:
        raise ValueError(f"model.dtype={m.dtype!r}; use one of {tuple(_DTYPES)}.")
    if with_projector is None:
        with_projector = bool(config.moco.enabled)
    return Expert(
        backbone=m.backbone,
        num_classes=config.dataset.num_classes,
        depth=m.depth,
        width=m.width,
        classifier=m.classifier,
        cos_scale=m.cos_scale,
        projector_dim=config.moco.dim if with_projector else 0,
        dtype=_DTYPES[m.dtype],
        bn_axis_name=bn_axis_name,
        bn_unbiased_variance=bool(resolve_config(config).model.bn_unbiased_variance),
    )
