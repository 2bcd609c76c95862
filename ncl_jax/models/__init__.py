"""Models: backbones, heads and the stacked K-expert wrapper. Nothing here reads a config:
`ncl_jax.config.builders` turns one into an `Expert`."""

from ncl_jax.models.experts import (
    BACKBONES,
    CLASSIFIERS,
    DTYPES,
    STRATEGIES,
    Expert,
    apply_stacked,
    init_stacked,
    resolve_strategy,
    stacked,
)

__all__ = [
    "BACKBONES",
    "CLASSIFIERS",
    "DTYPES",
    "STRATEGIES",
    "Expert",
    "apply_stacked",
    "init_stacked",
    "resolve_strategy",
    "stacked",
]
