"""The training state: one pytree holding everything a step reads and writes.

Experts are stacked (leading axis K on every params / batch_stats leaf). The key encoders of
the self-supervision branch (EMA of the query experts) live here too, with their own BatchNorm
statistics, plus one queue of normalised keys per expert.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from ncl_jax.core.moco import MocoOptions, init_key_encoders, init_queues
from ncl_jax.models import Expert, init_stacked
from ncl_jax.models.experts import num_experts_of


class TrainState(struct.PyTreeNode):
    step: jax.Array  # int32 scalar: optimiser steps taken
    params: Any  # stacked expert parameters [K, ...]
    batch_stats: Any  # stacked BatchNorm running statistics [K, ...]
    opt_state: optax.OptState
    ema_params: Any  # key encoders (MoCo), stacked; None when self-supervision is off
    ema_batch_stats: Any  # key encoders' own BatchNorm statistics; None when off
    queue: jax.Array | None  # [K, N, D] L2-normalised keys per expert; None when off
    queue_ptr: jax.Array | None  # int32 scalar: next write position in the queues
    rng: jax.Array  # root PRNG key; every step folds in its step number

    @property
    def num_experts(self) -> int:
        return num_experts_of(self.params)


def train_state_initializer(
    expert: Expert,
    *,
    num_experts: int,
    tx: optax.GradientTransformation,
    image_shape: tuple[int, int, int],
    moco: MocoOptions | None,
):
    """fn(rng) -> TrainState: K independent experts (with MoCo: key encoders and queues,
    `ncl_jax.core.moco`). Run it under jit (`models.experts.jit_run_once`) for the initial state,
    or under jax.eval_shape for a restore target."""
    if num_experts < 1:
        raise ValueError(f"model.num_experts={num_experts}: NCL needs at least one expert.")
    sample = jnp.zeros((1, *image_shape), jnp.float32)

    def init(rng):
        init_rng, key_rng, queue_rng, root_rng = jax.random.split(rng, 4)
        variables = init_stacked(expert, num_experts, init_rng, sample)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        ema_params = ema_batch_stats = queue = queue_ptr = None
        if moco is not None:
            ema_params, ema_batch_stats = init_key_encoders(
                variables,
                expert=expert,
                num_experts=num_experts,
                rng=key_rng,
                sample=sample,
                key_init=moco.key_init,
            )
            queue, queue_ptr = init_queues(
                queue_rng, num_experts=num_experts, size=moco.queue_size, dim=expert.projector_dim
            )
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            ema_params=ema_params,
            ema_batch_stats=ema_batch_stats,
            queue=queue,
            queue_ptr=queue_ptr,
            rng=root_rng,
        )

    return init
