"""Config validation: every check that needs no data and no compilation, on a resolved config,
so a bad config fails in a second with one line (`ConfigError`) that names the field and the
fix.
"""

from __future__ import annotations

import ml_collections

from ncl_jax.config.variants import VARIANTS, require_resolved
from ncl_jax.core.losses import ANCHORS, DISTILL_NORMS, HARD_PROBS, NIL_HARD_SETS
from ncl_jax.core.metrics import AGGREGATIONS
from ncl_jax.core.moco import KEY_INITS
from ncl_jax.core.optim import SCHEDULES
from ncl_jax.data.device_pipeline import PIPELINES
from ncl_jax.data.long_tail import GROUP_RULES
from ncl_jax.data.normalization import NORMALIZATION
from ncl_jax.errors import ConfigError
from ncl_jax.models import BACKBONES, CLASSIFIERS, DTYPES, STRATEGIES

# Every field with a fixed set of values -> that set, as defined by the code that implements
# the choice (one list per field; nothing here is a second copy).
CHOICES: dict[str, tuple] = {
    "variant": VARIANTS,
    "model.backbone": BACKBONES,
    "model.classifier": CLASSIFIERS,
    "model.expert_strategy": ("auto", *STRATEGIES),
    "model.dtype": tuple(DTYPES),
    "loss.hard_probs": HARD_PROBS,
    "loss.nil_hard_set": NIL_HARD_SETS,
    "loss.anchor": ANCHORS,
    "loss.distill_norm": DISTILL_NORMS,
    "moco.key_init": KEY_INITS,
    "optim.schedule": SCHEDULES,
    "group_rule": GROUP_RULES,
    "eval_aggregation": AGGREGATIONS,
    "dataset.normalization": tuple(NORMALIZATION),
    "dataset.pipeline": PIPELINES,
}


def _get(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def validate_config(
    config: ml_collections.ConfigDict, *, num_devices: int, num_processes: int = 1
) -> None:
    """Raises ConfigError for the first inconsistent value, before any compute; `config` must
    be resolved (ncl_jax.config.variants.resolve_config)."""
    require_resolved(config)
    for dotted, choices in CHOICES.items():
        if _get(config, dotted) not in choices:
            value = _get(config, dotted)
            raise ConfigError(f"{dotted}={value!r} is unknown; use one of {choices}.")
    k = config.model.num_experts
    if k < 1:
        raise ConfigError(f"model.num_experts={k}: NCL needs at least one expert (K >= 1).")
    c = config.dataset.num_classes
    if c < 2:
        raise ConfigError(f"dataset.num_classes={c}: need at least 2 classes.")
    num_hard = config.loss.num_hard
    if not 1 <= num_hard < c:
        raise ConfigError(
            f"loss.num_hard resolves to {num_hard} hard negatives for {c} classes; it must be in "
            f"[1, {c - 1}] (set loss.num_hard or loss.hard_ratio)."
        )
    size = config.batch_size
    if size < 1 or size % num_devices:
        raise ConfigError(
            f"batch_size={size} does not split over {num_devices} devices "
            f"({num_processes} processes); use a multiple of {num_devices}."
        )
    if config.eval_batch_size < 1:  # evaluation rounds it up to whole device batches
        raise ConfigError(f"eval_batch_size={config.eval_batch_size} must be >= 1.")
    cpu_devices = config.get("cpu_devices", -1)
    if cpu_devices != -1 and cpu_devices < 1:
        raise ConfigError(f"cpu_devices={cpu_devices}: use -1 (one per core) or a count >= 1.")
    try:
        [float(t) for t in config.eval_tau]
    except (TypeError, ValueError):
        raise ConfigError(
            f"eval_tau={config.eval_tau!r} must be numbers, e.g. (0.0, 0.5, 1.0)."
        ) from None
    factor = config.dataset.imbalance_factor
    if factor != 0 and not factor >= 1:
        raise ConfigError(
            f"dataset.imbalance_factor={factor} must be 0 (keep the split) or n_max/n_min >= 1."
        )
    if config.num_epochs < 1:
        raise ConfigError(f"num_epochs={config.num_epochs} must be >= 1.")
    if config.moco.enabled:
        n, b = config.moco.queue_size, config.batch_size
        if n < b or n % b:
            raise ConfigError(
                f"moco.queue_size={n} must be a positive multiple of the global batch_size={b} "
                "(whole batches are enqueued)."
            )
        if not 0.0 <= config.moco.momentum < 1.0:
            raise ConfigError(f"moco.momentum={config.moco.momentum} must be in [0, 1).")
        if config.moco.temperature <= 0:
            raise ConfigError(f"moco.temperature={config.moco.temperature} must be > 0.")
        if config.moco.ema_repeats < 1:
            raise ConfigError(f"moco.ema_repeats={config.moco.ema_repeats} must be >= 1.")
    for name in ("nil_hard_weight", "distill_weight", "hard_distill_weight"):
        if config.loss[name] < 0:
            raise ConfigError(f"loss.{name}={config.loss[name]} must be >= 0 (0 removes the term).")
    if config.optim.learning_rate <= 0:
        raise ConfigError(f"optim.learning_rate={config.optim.learning_rate} must be > 0.")
    if config.checkpoint_every_epochs < 1 or config.eval_every_epochs < 1:
        raise ConfigError("checkpoint_every_epochs and eval_every_epochs must be >= 1.")
