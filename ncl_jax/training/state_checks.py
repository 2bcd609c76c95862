"""What a checkpoint's state is checked for on save and restore: finite values, its arrays'
shapes against the config's, and a SHA-256 per array against bytes that rot on disk."""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np

# The meta field holding state_digest(state) (absent in checkpoints of older versions).
DIGEST_KEY = "state_sha256"
# What "non-finite" covers in messages (core.metrics.tree_is_finite).
NONFINITE = "NaN, Inf or |x| >= 2^64"


def shape_mismatch(restored: Any, target: Any) -> str | None:
    """None when every restored array has its target's shape, else what differs.

    Orbax restores arrays at their saved shapes even when the target's differ (a config.json
    edited after training, a checkpoint copied from another run), which would only fail deep
    inside Flax; this names the first difference instead."""
    paths = lambda tree: {
        jax.tree_util.keystr(k): tuple(np.shape(v))
        for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
    saved, wanted = paths(restored), paths(target)
    differ = [k for k in wanted if saved.get(k) != wanted[k]] + [
        k for k in saved if k not in wanted
    ]
    if not differ:
        return None
    first = differ[0]
    return (
        f"{len(differ)} arrays differ, e.g. {first.lstrip('.')}: saved {saved.get(first)}, "
        f"the config needs {wanted.get(first)}"
    )


def state_digest(state: Any) -> dict[str, str]:
    """{array path: SHA-256 of its bytes} of a host state tree. Saved in each checkpoint's
    meta (DIGEST_KEY) and compared on restore, so bytes that rot on disk into other finite
    values are caught; the cost per checkpoint is in docs/performance.md."""
    return {
        jax.tree_util.keystr(path): hashlib.sha256(
            np.ascontiguousarray(np.asarray(leaf)).tobytes()
        ).hexdigest()
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
    }
