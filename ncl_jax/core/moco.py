"""MoCo self-supervision of every expert (paper Sec. 3.3, Eq. 11): all of it but the loss.

Each expert k has a key encoder (an exponential moving average of expert k, held stacked in
the TrainState next to the experts) and a queue of N L2-normalised keys. One step:

  1. `compute_keys`: the key encoders embed the key view; under the paper's (MoCo) order the
     EMA is applied first, under the official order it is applied afterwards (step 3).
  2. the InfoNCE loss `ncl_jax.core.losses.moco_loss` (Eq. 11, with the other equations) compares
     each expert's query projections with its own keys (positives) and its queue (negatives).
  3. `finish_step`: the official-order EMA, then the keys of the GLOBAL batch are all-gathered
     and written into the ring buffer, so every replica holds the same queue.

Pure functions over pytrees; the collectives name the pmap axis they run over.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ncl_jax.core.losses import l2_normalize
from ncl_jax.models import Expert, apply_stacked, init_stacked

KEY_INITS = ("copy", "independent")


@dataclasses.dataclass(frozen=True)
class MocoOptions:
    """The self-supervision settings, one per `moco.*` config field of the same name (filled
    by `ncl_jax.config.builders`; `moco.enabled` is whether the step holds one at all). No
    defaults here: the config owns them."""

    dim: int  # projection dimension D
    queue_size: int  # N keys per expert queue (a multiple of the global batch)
    temperature: float  # tau of Eq. 11
    weight: float  # weight of L_con in Eq. 12
    momentum: float  # EMA momentum m of the key encoders
    ema_repeats: int  # EMA applications per step (paper 1, official K)
    key_init: str  # KEY_INITS: "copy" of the query experts | "independent" random init
    ema_projector: bool  # EMA the key MLP too (official: a frozen random MLP)
    ema_before_keys: bool  # EMA before computing the keys (MoCo) or after (official)

    def __post_init__(self):
        if self.key_init not in KEY_INITS:
            raise ValueError(f"moco.key_init={self.key_init!r}; use one of {KEY_INITS}.")


def init_key_encoders(
    variables: dict, *, expert: Expert, num_experts: int, rng: jax.Array, sample, key_init: str
) -> tuple[Any, Any]:
    """(ema_params, ema_batch_stats), stacked [K, ...] like the experts.

    key_init "copy": copies of the query experts' `variables` (MoCo; paper); "independent": a
    separately initialised network (official CIFAR code). Copies are separate buffers, so the
    experts' params can be donated to the step.
    """
    source = variables if key_init == "copy" else init_stacked(expert, num_experts, rng, sample)
    ema_params = jax.tree.map(jnp.copy, source["params"])
    ema_batch_stats = jax.tree.map(jnp.copy, source.get("batch_stats", {}))
    return ema_params, ema_batch_stats


def init_queues(rng: jax.Array, *, num_experts: int, size: int, dim: int):
    """(queue float[K, N, D] of random unit vectors, write pointer int32 0)."""
    queue = jax.random.normal(rng, (num_experts, size, dim))
    # Gaussian rows are never zero, so no epsilon (and bit-identical to earlier releases).
    queue = queue / jnp.linalg.norm(queue, axis=-1, keepdims=True)
    return queue, jnp.zeros((), jnp.int32)


def ema_update(
    ema_params, params, *, momentum: float, repeats: int = 1, include_projector: bool = True
):
    """ema <- m^r * ema + (1 - m^r) * params: r applications of a momentum-m update with the
    same params (the official code applies it K times per step). A frozen projector keeps its
    key-side values (official: the key MLP is never updated)."""
    m = momentum**repeats
    new = jax.tree.map(lambda e, p: m * e + (1.0 - m) * p, ema_params, params)
    if not include_projector and "projector" in new:
        new = {**new, "projector": ema_params["projector"]}
    return new


def compute_keys(state, key_images: jax.Array, *, cfg) -> tuple[Any, Any, jax.Array]:
    """Step 1: (ema_params, ema_batch_stats, keys float[K, b, D], no gradient).

    `state` is the TrainState before the step; `cfg` the StepConfig (its `moco` options, the
    expert and the strategy)."""
    ema_params = state.ema_params
    if cfg.moco.ema_before_keys:
        ema_params = _ema(cfg.moco, ema_params, state.params)
    out, ema_stats = apply_stacked(
        cfg.expert, ema_params, state.ema_batch_stats, key_images, train=True, strategy=cfg.strategy
    )
    return ema_params, ema_stats, jax.lax.stop_gradient(out["projections"])


def finish_step(state, ema_params, ema_stats, keys: jax.Array, *, cfg, axis_name: str):
    """Step 3: (ema_params, ema_batch_stats, queue, queue_ptr) after the update.

    The official order applies the EMA here, with the parameters from before the step."""
    if not cfg.moco.ema_before_keys:
        ema_params = _ema(cfg.moco, ema_params, state.params)
    if not cfg.sync_batch_stats:  # keep replicas identical (DDP broadcasts rank 0's buffers)
        ema_stats = jax.lax.pmean(ema_stats, axis_name)
    gathered = jax.lax.all_gather(
        l2_normalize(keys.astype(jnp.float32)), axis_name, axis=1, tiled=True
    )
    queue, queue_ptr = enqueue(state.queue, state.queue_ptr, gathered)
    return ema_params, ema_stats, queue, queue_ptr


def enqueue(queue: jax.Array, ptr: jax.Array, keys: jax.Array):
    """Writes normalised keys [K, G, D] at ptr of queue [K, N, D] (ring buffer; N % G == 0,
    checked by the config). Returns (queue, new ptr)."""
    size = queue.shape[1]
    queue = jax.lax.dynamic_update_slice_in_dim(queue, keys.astype(queue.dtype), ptr, axis=1)
    return queue, (ptr + keys.shape[1]) % size


def _ema(options: MocoOptions, ema_params, params):
    return ema_update(
        ema_params,
        params,
        momentum=options.momentum,
        repeats=options.ema_repeats,
        include_projector=options.ema_projector,
    )
