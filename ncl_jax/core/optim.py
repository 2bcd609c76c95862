"""Optimiser and learning-rate schedules of the official recipe, built from optax parts.

The official code steps its scheduler once per epoch, before the epoch, so epoch e (1-based)
trains at one constant rate. The per-epoch rules below are pure functions of e; `per_epoch`
turns one into an optax schedule of the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ("warmup_multistep", "cosine")  # optim.schedule: both stepped once per epoch
# Schedules whose rate at an epoch depends on num_epochs, with the reason: a run of them
# cannot be extended to more epochs faithfully (ncl_jax.config.resume_rules).
LENGTH_DEPENDENT_SCHEDULES = {
    "cosine": "sets the rate of every epoch from num_epochs (it reaches cosine_min_lr at the "
    "last epoch)",
}


def warmup_multistep_lr(
    epoch: int,
    *,
    base_lr: float,
    warmup_epochs: int = 5,
    warmup_factor: float = 1.0 / 3.0,
    milestones: Sequence[int] = (320, 360),
    decay_factor: float = 0.1,
) -> float:
    """Linear warm-up from warmup_factor*base over `warmup_epochs`, then x decay at milestones.

    For base 0.1: e1 0.046667, e2 0.06, e3 0.073333, e4 0.086667, e5-319 0.1, e320-359 0.01,
    e360-400 0.001 (the official WarmupMultiStepLR).
    """
    if epoch < warmup_epochs:
        alpha = epoch / warmup_epochs
        warm = warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    return base_lr * warm * decay_factor ** sum(1 for m in milestones if m <= epoch)


def cosine_lr(epoch: int, *, base_lr: float, num_epochs: int, min_lr: float = 1e-4) -> float:
    """Per-epoch cosine from base_lr to min_lr at epoch num_epochs (no warm-up)."""
    return min_lr + (base_lr - min_lr) * (1 + math.cos(math.pi * epoch / num_epochs)) / 2


def per_epoch(
    epoch_lr: Callable[[int], float], steps_per_epoch: int, num_epochs: int
) -> optax.Schedule:
    """An optax schedule of the step that is constant within each (1-based) epoch."""
    table = jnp.asarray(np.array([epoch_lr(e) for e in range(1, num_epochs + 1)], np.float32))

    def schedule(step):
        epoch_index = jnp.clip(step // steps_per_epoch, 0, num_epochs - 1)
        return table[epoch_index]

    return schedule


def make_schedule(optim_config, *, steps_per_epoch: int, num_epochs: int) -> optax.Schedule:
    o = optim_config
    if o.schedule == "warmup_multistep":
        fn = lambda e: warmup_multistep_lr(
            e,
            base_lr=o.learning_rate,
            warmup_epochs=o.warmup_epochs,
            warmup_factor=o.warmup_factor,
            milestones=tuple(o.milestones),
            decay_factor=o.decay_factor,
        )
    elif o.schedule == "cosine":
        fn = lambda e: cosine_lr(
            e, base_lr=o.learning_rate, num_epochs=num_epochs, min_lr=o.cosine_min_lr
        )
    else:
        raise ValueError(f"optim.schedule={o.schedule!r}; use one of {SCHEDULES}.")
    return per_epoch(fn, steps_per_epoch, num_epochs)


def make_optimizer(optim_config, schedule: optax.Schedule) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum and COUPLED L2 on every parameter, as torch.optim.SGD:
    d = g + wd*theta; buf = m*buf + d; step = d + m*buf (nesterov); theta -= lr*step."""
    o = optim_config
    return optax.chain(
        optax.add_decayed_weights(o.weight_decay),
        optax.trace(decay=o.momentum, nesterov=o.nesterov),
        optax.scale_by_learning_rate(schedule),
    )


def applied_learning_rate(opt_state, schedule: optax.Schedule) -> jax.Array:
    """The rate the optimiser applies at its next update: `schedule` at optax's own step count
    (ScaleByScheduleState.count), which a restored or hand-built state may hold apart from
    TrainState.step."""
    return schedule(optax.tree_utils.tree_get(opt_state, "count"))
