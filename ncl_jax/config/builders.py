"""What a resolved config builds: the expert module, the step's option records, `StepConfig`,
the initial state (with pretrained weights) and the abstract state used as a restore target.

Option records are filled by field name from their config section (`options_from`), so a new
loss weight is a field of `ncl_jax/config/base.py` and of `LossOptions`, and nothing here changes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
import numpy as np

from ncl_jax.config.variants import require_resolved
from ncl_jax.core import optim
from ncl_jax.core.losses import LossOptions
from ncl_jax.core.metrics import EvalOptions
from ncl_jax.core.moco import MocoOptions
from ncl_jax.core.state import TrainState, train_state_initializer
from ncl_jax.core.train_step import AXIS, StepConfig
from ncl_jax.errors import DataError
from ncl_jax.models import DTYPES, Expert, pretrained, resolve_strategy
from ncl_jax.models.experts import jit_run_once


def options_from(record: type, section: Any, *, prefix: str = ""):
    """`record` (a dataclass) with each field `f` read from `section[prefix + f]`: the one way
    option records are filled from a config section."""
    return record(**{f.name: section[prefix + f.name] for f in dataclasses.fields(record)})


def loss_options(config: ml_collections.ConfigDict) -> LossOptions:
    """The `loss` section of a resolved config as the step's LossOptions."""
    require_resolved(config)
    return options_from(LossOptions, config.loss)


def moco_options(config: ml_collections.ConfigDict) -> MocoOptions | None:
    """The `moco` section as MocoOptions, or None when self-supervision is off."""
    return options_from(MocoOptions, config.moco) if config.moco.enabled else None


def eval_options(config: ml_collections.ConfigDict) -> EvalOptions:
    """The `eval_*` fields as EvalOptions."""
    options = options_from(EvalOptions, config, prefix="eval_")
    return dataclasses.replace(options, tau=tuple(float(t) for t in options.tau))


def build_expert(
    config: ml_collections.ConfigDict,
    *,
    bn_axis_name: str | None = None,
    with_projector: bool | None = None,
) -> Expert:
    """One expert of a resolved config (model, dataset and moco sections)."""
    require_resolved(config)
    m = config.model
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
        dtype=DTYPES[m.dtype],
        bn_axis_name=bn_axis_name,
        bn_unbiased_variance=bool(m.bn_unbiased_variance),
    )


def make_step_config(
    config: ml_collections.ConfigDict,
    *,
    class_counts,
    steps_per_epoch: int,
    platform: str | None = None,
) -> StepConfig:
    """Everything static the step needs, from a resolved config; class counts are checked
    here, before compiling. Raises DataError for counts that do not fit the config."""
    require_resolved(config)
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
    return StepConfig(
        expert=build_expert(config, bn_axis_name=AXIS if config.sync_batch_stats else None),
        tx=optim.make_optimizer(config.optim, schedule),
        lr_schedule=schedule,
        class_counts=counts,
        strategy=resolve_strategy(config.model.expert_strategy, platform),
        sync_batch_stats=config.sync_batch_stats,
        loss=loss_options(config),
        moco=moco_options(config),
        eval=eval_options(config),
    )


def _initializer(config: ml_collections.ConfigDict, step_config: StepConfig):
    size = config.dataset.image_size
    return train_state_initializer(
        step_config.expert.clone(bn_axis_name=None),
        num_experts=config.model.num_experts,
        tx=step_config.tx,
        image_shape=(size, size, 3),
        moco=step_config.moco,
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
