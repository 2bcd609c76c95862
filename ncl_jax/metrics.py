"""Accumulating the step's (sum, count) metrics on device, and the non-finite loss guard.

Metrics stay on device between log steps (no per-step host sync, so input and compute keep
overlapping); they are summed over steps and devices only when written.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NONFINITE_KEY = "first_nonfinite_step"
_NO_STEP = np.iinfo(np.int32).max


def nonfinite_marker(loss, step):
    """The step number if the loss is not finite, else int32 max (combined with min)."""
    return jnp.where(jnp.isfinite(loss), _NO_STEP, step).astype(jnp.int32)


@jax.jit
def _combine(total, new):
    return {
        k: jnp.minimum(total[k], v) if k == NONFINITE_KEY else total[k] + v for k, v in new.items()
    }


class MetricSums:
    """Running sums of per-device metric pairs [D, 2] (and the min non-finite step)."""

    def __init__(self):
        self._total = None

    def add(self, metrics: dict) -> None:
        self._total = metrics if self._total is None else _combine(self._total, metrics)

    def result(self) -> tuple[dict[str, float], int | None]:
        """(means over everything added, first step with a non-finite loss or None); resets."""
        if self._total is None:
            return {}, None
        host = jax.device_get(self._total)
        self._total = None
        if jax.process_count() > 1:  # every process logs the same global means
            from jax.experimental import multihost_utils

            host = multihost_utils.process_allgather(host)
        first_bad = int(np.min(host.pop(NONFINITE_KEY, _NO_STEP)))
        means = {}
        for name, pair in host.items():
            total, count = np.asarray(pair, np.float64).reshape(-1, 2).sum(0)
            means[name] = float(total / count) if count else float("nan")
        return means, (None if first_bad == _NO_STEP else first_bad)
