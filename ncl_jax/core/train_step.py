"""Pure per-device NCL train and eval steps, and their pmapped wrappers.

`train_step(state, batch, *, cfg)` performs one exact NCL update (Eq. 12) for the local shard
of the global batch; collectives over AXIS ('batch') make it the same update as one device on
the whole batch: gradients are pmean'ed, BatchNorm statistics synchronised, MoCo keys
all-gathered before they are enqueued. No I/O and no globals: everything static comes in
`StepConfig`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from ncl_jax.core import losses, metrics, moco
from ncl_jax.core.metrics import NONFINITE_KEY, all_finite, nonfinite_marker, pair, train_metrics
from ncl_jax.core.optim import applied_learning_rate
from ncl_jax.core.state import TrainState
from ncl_jax.models import Expert, apply_stacked

AXIS = "batch"


@dataclasses.dataclass(frozen=True, eq=False)
class StepConfig:
    """Static collaborators of the step (hashable by identity for jit/pmap closures) and the
    option records of its parts, built once from a resolved config by
    `ncl_jax.config.builders.make_step_config`. No defaults: nothing here can drift from the
    config."""

    expert: Expert  # bn_axis_name=AXIS for SyncBN
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    class_counts: np.ndarray  # float [C] training images per class, all > 0
    strategy: str  # how stacked experts are applied (models.experts.STRATEGIES)
    sync_batch_stats: bool  # BatchNorm statistics over the global batch (SyncBN)
    loss: losses.LossOptions  # the supervised part, Eqs. 2-10
    moco: moco.MocoOptions | None  # self-supervision (Eq. 11); None when it is off
    eval: metrics.EvalOptions  # used by the evaluation steps only


def _choose_anchor(rng, num_experts: int, anchor: str):
    if anchor == "first" or num_experts == 1:
        return jnp.zeros((), jnp.int32)
    # The rng is replicated, so every device draws the same anchor.
    return jax.random.randint(jax.random.fold_in(rng, 1), (), 0, num_experts)


def train_step(state: TrainState, batch: dict[str, jax.Array], *, cfg: StepConfig):
    """One NCL update on this device's shard. batch: image [b,H,W,3], label [b], and
    key_image [b,H,W,3] when MoCo is on. Returns (new_state, metrics as (sum, count))."""
    labels = batch["label"]
    num_experts = state.num_experts
    rng = jax.random.fold_in(state.rng, state.step)
    anchor = _choose_anchor(rng, num_experts, cfg.loss.anchor)
    counts = jnp.asarray(cfg.class_counts, jnp.float32)

    ema_params, ema_stats, keys = state.ema_params, state.ema_batch_stats, None
    if cfg.moco is not None:
        ema_params, ema_stats, keys = moco.compute_keys(state, batch["key_image"], cfg=cfg)

    def loss_fn(params):
        out, new_stats = apply_stacked(
            cfg.expert, params, state.batch_stats, batch["image"], train=True, strategy=cfg.strategy
        )
        sup, aux = losses.ncl_supervised_loss(
            out["logits"], labels, counts, options=cfg.loss, anchor_expert=anchor
        )
        total = sup
        if cfg.moco is not None:
            aux["moco"] = losses.moco_loss(
                out["projections"], keys, state.queue, temperature=cfg.moco.temperature
            )
            total = total + cfg.moco.weight * aux["moco"]
        return total, (aux, out["logits"], new_stats)

    (loss, (aux, logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    grads = jax.lax.pmean(grads, AXIS)
    if not cfg.sync_batch_stats:  # keep replicas identical (DDP broadcasts rank 0's buffers)
        new_stats = jax.lax.pmean(new_stats, AXIS)
    updates, opt_state = cfg.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)

    queue, queue_ptr = state.queue, state.queue_ptr
    if cfg.moco is not None:
        ema_params, ema_stats, queue, queue_ptr = moco.finish_step(
            state, ema_params, ema_stats, keys, cfg=cfg, axis_name=AXIS
        )

    new_state = state.replace(
        step=state.step + 1,
        params=params,
        batch_stats=new_stats,
        opt_state=opt_state,
        ema_params=ema_params,
        ema_batch_stats=ema_stats,
        queue=queue,
        queue_ptr=queue_ptr,
    )
    step_metrics = train_metrics(loss, aux, logits, labels)
    step_metrics["learning_rate"] = pair(applied_learning_rate(state.opt_state, cfg.lr_schedule), 1)
    # A finite loss can still produce a broken update: check everything the step wrote.
    finite = jnp.isfinite(loss) & all_finite(new_state)
    step_metrics[NONFINITE_KEY] = nonfinite_marker(finite, state.step)
    return new_state, step_metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, cfg: StepConfig):
    """The K experts' raw logits [K, b, C] with BatchNorm running statistics."""
    out, _ = apply_stacked(
        cfg.expert,
        state.params,
        state.batch_stats,
        batch["image"],
        train=False,
        strategy=cfg.strategy,
    )
    return out["logits"]


def eval_sums(logits, batch: dict[str, jax.Array], *, cfg: StepConfig) -> dict:
    """One batch's evaluation sums on this device (unreduced): per-class correct counts
    "correct" [T, K + 1, C] and "totals" [C] (`metrics.per_class_correct`), and the NLL and
    calibration sums "nll" [T, K + 1], "calibration" [T, K + 1, bins, 3]
    (`metrics.likelihood_sums`), for each tau of cfg.eval."""
    counts = jnp.asarray(cfg.class_counts, jnp.float32)
    options = dict(
        log_prior=jnp.log(counts / jnp.sum(counts)),
        taus=cfg.eval.taus,
        aggregation=cfg.eval.aggregation,
    )
    correct, totals = metrics.per_class_correct(logits, batch["label"], batch["mask"], **options)
    return {
        "correct": correct,
        "totals": totals,
        **metrics.likelihood_sums(logits, batch["label"], batch["mask"], **options),
    }


def eval_counts_step(state: TrainState, batch: dict[str, jax.Array], *, cfg: StepConfig):
    """Evaluation reduced on device: `eval_sums`, psum'ed over devices."""
    return jax.lax.psum(eval_sums(eval_step(state, batch, cfg=cfg), batch, cfg=cfg), AXIS)


def replicate(tree: Any, devices=None) -> Any:
    """Copies of `tree` on every local device, laid out exactly as the pmapped step returns
    its state (mesh axis 'batch'), so the step compiles once rather than twice (flax's
    `replicate` uses a differently named mesh, which misses jit's cache on the second step)."""
    devices = list(devices or jax.local_devices())
    sharding = NamedSharding(Mesh(np.array(devices), (AXIS,)), PartitionSpec(AXIS))
    return jax.tree.map(
        lambda x: jax.device_put(
            np.broadcast_to(np.asarray(x), (len(devices), *np.shape(x))), sharding
        ),
        tree,
    )


def unreplicate(tree: Any) -> Any:
    """The first local device's copy of a replicated tree, as host numpy arrays.

    Reads the device buffer directly: indexing (x[0]) would launch a computation, which on a
    multi-process run is not guaranteed to stay local to this process."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)


def pmap_train_step(cfg: StepConfig, *, donate: bool = True, devices=None):
    """train_step under jax.pmap(axis_name='batch'); the state is donated (updated in place)."""
    return jax.pmap(
        functools.partial(train_step, cfg=cfg),
        axis_name=AXIS,
        donate_argnums=(0,) if donate else (),
        devices=devices,
    )


def pmap_eval_counts_step(cfg: StepConfig, *, devices=None):
    return jax.pmap(functools.partial(eval_counts_step, cfg=cfg), axis_name=AXIS, devices=devices)
