"""Objects built from a config: the expert module, optimiser, step config and initial state."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from ncl_jax import losses, optim, pretrained
from ncl_jax.errors import DataError
from ncl_jax.models import build_expert, resolve_strategy
from ncl_jax.models.experts import jit_run_once
from ncl_jax.state import TrainState, train_state_initializer
from ncl_jax.train_step import AXIS, StepConfig
from ncl_jax.variants import resolve_config


def loss_options(config: ml_collections.ConfigDict) -> losses.LossOptions:
    """The LossOptions of a resolved config."""
    # Every LossOptions field is a loss.* config field of the same name.
    return losses.LossOptions(
        **{f.name: config.loss[f.name] for f in dataclasses.fields(losses.LossOptions)}
    )


def make_step_config(
    config: ml_collections.ConfigDict,
    *,
    class_counts,
    steps_per_epoch: int,
    platform: str | None = None,
) -> StepConfig:
    """Everything static the step needs; class counts are checked here, before compiling.
    Fields left to the variant are resolved here too (ncl_jax.variants)."""
    config = resolve_config(config)
    counts = np.asarray(class_counts, np.float32)
    if counts.shape != (config.dataset.num_classes,):
        raise DataError(
            f"class_counts has {counts.shape[0]} entries but dataset.num_classes="
            f"{config.dataset.num_classes}; set dataset.num_classes to match the data."
        )
    if np.any(counts <= 0):
        empty = np.flatnonzero(counts <= 0)[:10].tolist()
        raise DataError(
            f"classes {empty} have no training images; the balanced softmax needs "
            "every class present (lower the imbalance factor or drop the class)."
        )
    schedule = optim.make_schedule(
        config.optim, steps_per_epoch=steps_per_epoch, num_epochs=config.num_epochs
    )
    mc = config.moco
    return StepConfig(
        expert=build_expert(config, bn_axis_name=AXIS if config.sync_batch_stats else None),
        tx=optim.make_optimizer(config.optim, schedule),
        lr_schedule=schedule,
        class_counts=counts,
        num_hard=int(config.loss.num_hard),
        loss_options=loss_options(config),
        distill_weight=config.loss.distill_weight,
        hard_distill_weight=config.loss.hard_distill_weight,
        nil_hard_weight=config.loss.nil_hard_weight,
        random_anchor=config.loss.anchor == "random",
        strategy=resolve_strategy(config.model.expert_strategy, platform),
        moco=bool(mc.enabled),
        moco_weight=mc.weight,
        moco_temperature=mc.temperature,
        ema_momentum=mc.momentum,
        ema_repeats=mc.ema_repeats,
        ema_projector=mc.ema_projector,
        ema_before_keys=mc.ema_before_keys,
        sync_batch_stats=config.sync_batch_stats,
        eval_taus=eval_taus(config),
        eval_aggregation=config.get("eval_aggregation", "mean_logits"),
    )


def eval_taus(config: ml_collections.ConfigDict) -> tuple[float, ...]:
    """0 (the raw logits, always reported) then the other configured eval_tau values."""
    others = [float(t) for t in config.get("eval_tau", (0.0,)) if float(t) != 0]
    return (0.0, *dict.fromkeys(others))


def _initializer(config: ml_collections.ConfigDict, step_config: StepConfig):
    config = resolve_config(config)
    size = config.dataset.image_size
    return train_state_initializer(
        step_config.expert.clone(bn_axis_name=None),
        num_experts=config.model.num_experts,
        tx=step_config.tx,
        image_shape=(size, size, 3),
        moco=bool(config.moco.enabled),
        queue_size=config.moco.queue_size,
        key_init=config.moco.key_init,
    )


def create_state(config: ml_collections.ConfigDict, step_config: StepConfig) -> TrainState:
    """The initial (unreplicated) train state from config.seed; with model.pretrained_path,
    every expert's (and key encoder's) backbone starts from those weights. The file is read
    before compiling, so a wrong path fails at once."""
    path = config.model.pretrained_path
    encoder = pretrained.load_encoder(path) if path else None
    state = jit_run_once(_initializer(config, step_config), jax.random.PRNGKey(config.seed))
    return state if encoder is None else pretrained.apply_pretrained(state, encoder)


def abstract_state(config: ml_collections.ConfigDict, step_config: StepConfig) -> TrainState:
    """Shapes and dtypes of the state, without computing it (a restore target)."""
    return jax.eval_shape(_initializer(config, step_config), jax.random.PRNGKey(config.seed))
