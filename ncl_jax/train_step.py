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

from ncl_jax import losses
from ncl_jax.metrics import NONFINITE_KEY, nonfinite_marker
from ncl_jax.models import Expert, apply_stacked
from ncl_jax.state import TrainState, ema_update

AXIS = "batch"


@dataclasses.dataclass(frozen=True, eq=False)
class StepConfig:
    """Static collaborators of the step (hashable by identity for jit/pmap closures)."""

    expert: Expert  # bn_axis_name=AXIS for SyncBN
    tx: optax.GradientTransformation
    lr_schedule: optax.Schedule
    class_counts: np.ndarray  # float [C] training images per class, all > 0
    num_hard: int
    loss_options: losses.LossOptions
    distill_weight: float = 0.6
    hard_distill_weight: float = 0.6
    random_anchor: bool = True  # paper: a random anchor expert per step; official: expert 0
    strategy: str = "loop"  # how stacked experts are applied (models.experts.STRATEGIES)
    moco: bool = False
    moco_weight: float = 1.0
    moco_temperature: float = 0.2
    ema_momentum: float = 0.999
    ema_repeats: int = 1
    ema_projector: bool = True
    ema_before_keys: bool = True
    sync_batch_stats: bool = True


def _pair(total, count) -> jax.Array:
    """A metric as (sum, count): exact under padding and across devices and hosts."""
    return jnp.stack([jnp.asarray(total, jnp.float32), jnp.asarray(count, jnp.float32)])


def _choose_anchor(rng, num_experts: int, random_anchor: bool):
    if not random_anchor or num_experts == 1:
        return jnp.zeros((), jnp.int32)
    # The rng is replicated, so every device draws the same anchor.
    return jax.random.randint(jax.random.fold_in(rng, 1), (), 0, num_experts)


def _ema(cfg: StepConfig, ema_params, params):
    return ema_update(
        ema_params,
        params,
        momentum=cfg.ema_momentum,
        repeats=cfg.ema_repeats,
        include_projector=cfg.ema_projector,
    )


def _enqueue(queue, ptr, keys):
    """Writes the globally gathered, normalised keys [K, G, D] at ptr (ring buffer)."""
    size = queue.shape[1]
    queue = jax.lax.dynamic_update_slice_in_dim(queue, keys.astype(queue.dtype), ptr, axis=1)
    return queue, (ptr + keys.shape[1]) % size


def train_step(state: TrainState, batch: dict[str, jax.Array], *, cfg: StepConfig):
    """One NCL update on this device's shard. batch: image [b,H,W,3], label [b], and
    key_image [b,H,W,3] when MoCo is on. Returns (new_state, metrics as (sum, count))."""
    labels = batch["label"]
    local_batch = labels.shape[0]
    num_experts = state.num_experts
    rng = jax.random.fold_in(state.rng, state.step)
    anchor = _choose_anchor(rng, num_experts, cfg.random_anchor)
    counts = jnp.asarray(cfg.class_counts, jnp.float32)

    ema_params, ema_stats, keys = state.ema_params, state.ema_batch_stats, None
    if cfg.moco:
        if cfg.ema_before_keys:
            ema_params = _ema(cfg, ema_params, state.params)
        key_out, ema_stats = apply_stacked(
            cfg.expert, ema_params, ema_stats, batch["key_image"], train=True, strategy=cfg.strategy
        )
        keys = jax.lax.stop_gradient(key_out["projections"])

    def loss_fn(params):
        out, new_stats = apply_stacked(
            cfg.expert, params, state.batch_stats, batch["image"], train=True, strategy=cfg.strategy
        )
        sup, aux = losses.ncl_supervised_loss(
            out["logits"],
            labels,
            counts,
            num_hard=cfg.num_hard,
            distill_weight=cfg.distill_weight,
            hard_distill_weight=cfg.hard_distill_weight,
            anchor=anchor,
            options=cfg.loss_options,
        )
        total = sup
        if cfg.moco:
            aux["moco"] = losses.moco_loss(
                out["projections"], keys, state.queue, temperature=cfg.moco_temperature
            )
            total = total + cfg.moco_weight * aux["moco"]
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
    if cfg.moco:
        if not cfg.ema_before_keys:  # official order: EMA after the keys, with pre-step params
            ema_params = _ema(cfg, ema_params, state.params)
        if not cfg.sync_batch_stats:
            ema_stats = jax.lax.pmean(ema_stats, AXIS)
        gathered = jax.lax.all_gather(
            losses.l2_normalize(keys.astype(jnp.float32)), AXIS, axis=1, tiled=True
        )
        queue, queue_ptr = _enqueue(queue, queue_ptr, gathered)

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
    metrics = _train_metrics(loss, aux, logits, labels, local_batch)
    metrics["learning_rate"] = _pair(cfg.lr_schedule(state.step), 1)
    metrics[NONFINITE_KEY] = nonfinite_marker(loss, state.step)
    return new_state, metrics


def _train_metrics(loss, aux, logits, labels, local_batch):
    metrics = {"loss": _pair(loss * local_batch, local_batch)}
    for name, value in aux.items():
        metrics[name] = _pair(value * local_batch, local_batch)
    correct = jnp.argmax(logits, axis=-1) == labels[None]  # [K, b]
    for k in range(logits.shape[0]):
        metrics[f"accuracy/expert_{k}"] = _pair(jnp.sum(correct[k]), local_batch)
    ensemble = jnp.argmax(jnp.mean(logits, axis=0), axis=-1) == labels
    metrics["accuracy/ensemble"] = _pair(jnp.sum(ensemble), local_batch)
    return metrics


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


def per_class_correct(logits, labels, mask):
    """Correct counts per class for each expert and the ensemble (mean of logits).

    Returns correct [K + 1, C] and totals [C], counting only mask=True examples."""
    num_classes = logits.shape[-1]
    preds = jnp.concatenate(
        [jnp.argmax(logits, -1), jnp.argmax(jnp.mean(logits, 0), -1)[None]], axis=0
    )  # [K+1, b]
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * mask[:, None]
    correct = (preds == labels[None]).astype(jnp.float32)
    return correct @ onehot, jnp.sum(onehot, axis=0)


def eval_counts_step(state: TrainState, batch: dict[str, jax.Array], *, cfg: StepConfig):
    """Evaluation reduced on device: per-class correct counts, psum'ed over devices."""
    logits = eval_step(state, batch, cfg=cfg)
    correct, totals = per_class_correct(logits, batch["label"], batch["mask"])
    return jax.lax.psum(correct, AXIS), jax.lax.psum(totals, AXIS)


def check_batch(batch: dict[str, Any], num_devices: int) -> None:
    """Fails before compiling when a batch is not laid out [devices, per_device, ...]."""
    for name, value in batch.items():
        if value.shape[0] != num_devices:
            raise ValueError(
                f"batch[{name!r}] has leading axis {value.shape[0]} but {num_devices} local "
                f"devices: reshape the batch to [devices, batch // devices, ...] and use a global "
                "batch size divisible by the device count."
            )


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


def pmap_eval_step(cfg: StepConfig, *, devices=None):
    return jax.pmap(functools.partial(eval_step, cfg=cfg), axis_name=AXIS, devices=devices)


def pmap_eval_counts_step(cfg: StepConfig, *, devices=None):
    return jax.pmap(functools.partial(eval_counts_step, cfg=cfg), axis_name=AXIS, devices=devices)
