"""The paper's NCL and the official code's, as one table of presets resolved after overrides.

Every config field whose value depends on the variant (or on other fields) is None in a
config until `resolve_config` fills it. Each program calls it exactly once, right after the
config file and every command-line override have been applied (or once on a saved run's
config.json, `ncl_jax.training.saved_runs.read_run_config`), and hands the locked result
down; everything below checks `require_resolved` instead of resolving again. A value the user
set is never replaced, so `--config.loss.hard_probs=restricted` wins over the official
preset, and the resolved config is what `config.json` records and what is logged.

Fields derived from others follow the variant's rule at resolution time, so overriding the
field they derive from takes effect:
  loss.num_hard     paper: round(beta * C) hard negatives; official: int(beta * C) - 1 (its
                    HCM_N counts the ground truth), beta = loss.hard_ratio;
  moco.ema_repeats  paper: 1; official: K = model.num_experts (its loop applies the EMA once
                    per expert per step).

A config file may preset more fields per variant (the CIFAR augmentation, ImageNet-LT's
schedule); those it sets itself from the variant in its argument. Changing `variant` on the
command line therefore could not change them, and is refused with one line naming the config
argument to use instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ncl_jax.errors import ConfigError

VARIANTS = ("paper", "official")

# field: (paper, official). The one table of presets; nothing else holds a second copy.
PRESETS: dict[str, tuple[Any, Any]] = {
    "loss.hard_probs": ("restricted", "masked_logits"),
    "loss.nil_hard_set": ("per_expert", "anchor"),
    "loss.anchor": ("random", "first"),
    "loss.distill_norm": ("pairs", "experts"),
    "loss.distill_log_eps": (0.0, 1e-9),
    "moco.key_init": ("copy", "independent"),
    "moco.ema_projector": (True, False),
    "moco.ema_before_keys": (True, False),
    "model.bn_unbiased_variance": (False, True),
    "group_rule": ("paper", "official"),
}

DERIVED: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    "loss.num_hard": (
        lambda c: max(1, round(c.loss.hard_ratio * c.dataset.num_classes)),
        lambda c: max(1, int(c.loss.hard_ratio * c.dataset.num_classes) - 1),
    ),
    "moco.ema_repeats": (lambda c: 1, lambda c: int(c.model.num_experts)),
}

# Fields added after configs were first written, with the value that reproduces how a run
# without them was trained: a config.json that lacks one (an older run) gets this value, not
# the variant's preset, so it evaluates and resumes as it was trained.
LEGACY_DEFAULTS: dict[str, Any] = {
    "loss.balanced": True,
    "loss.distill_balanced": True,
    "loss.nil_hard_weight": 1.0,
    "model.bn_unbiased_variance": False,
    "dataset.on_bad_file": "error",
    # Older runs read TFDS with tf.data; `auto` picks tf.data for them on the CPU hosts they
    # ran on, and keeps their config.json equal to a new run's default, so they resume.
    "dataset.pipeline": "auto",
    "dataset.cache_path": "",
}


def check_variant(variant: str) -> int:
    """Index of `variant` in VARIANTS; ConfigError for anything else."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant={variant!r} is unknown; use one of {VARIANTS}.")
    return VARIANTS.index(variant)


_MISSING = object()


def _get(config, dotted: str):
    node = config
    for part in dotted.split("."):
        if part not in node:
            return _MISSING
        node = node[part]
    return node


def _set(config, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


def replaced(config, changes: dict[str, Any]):
    """A locked copy of the resolved `config` with the dotted fields of `changes` set, e.g.
    replaced(config, {"dataset.pipeline": "device"}); `config` itself is left as it was."""
    copy = config.copy_and_resolve_references()
    for dotted, value in changes.items():
        _set(copy, dotted, value)
    copy.lock()
    return copy


def resolve_config(config):
    """A locked copy of `config` (no field can be added) with every field left None filled
    from the variant (PRESETS) or derived from other fields (DERIVED); fields already set are
    kept. Idempotent, but meant to run once per program.

    Raises ConfigError for an unknown variant, or when `variant` was changed after the config
    file chose its own per-variant presets (`preset_variant`)."""
    index = check_variant(config.variant)
    chosen_by_file = config.get("preset_variant")
    if chosen_by_file and chosen_by_file != config.variant:
        raise ConfigError(
            f"variant={config.variant!r} was set after the config file built its "
            f"{chosen_by_file!r} recipe; choose the variant in the config argument instead: "
            f"append ,{config.variant} to it (e.g. --config=configs/cifar10_lt.py:quick,"
            f"{config.variant}) and drop --config.variant."
        )
    resolved = config.copy_and_resolve_references()
    for dotted, value in LEGACY_DEFAULTS.items():
        if _get(resolved, dotted) is _MISSING:
            _set(resolved, dotted, value)
    for dotted, values in PRESETS.items():
        if _get(resolved, dotted) is None:
            _set(resolved, dotted, values[index])
    for dotted, rules in DERIVED.items():
        if _get(resolved, dotted) is None:
            _set(resolved, dotted, rules[index](resolved))
    resolved.lock()
    return resolved


def require_resolved(config) -> None:
    """ConfigError naming the first field that `resolve_config` would still fill: what every
    function below the programs calls instead of resolving again."""
    for dotted in (*PRESETS, *DERIVED):
        if _get(config, dotted) is None or _get(config, dotted) is _MISSING:
            raise ConfigError(
                f"{dotted} is None: this config was not resolved; call "
                "ncl_jax.config.variants.resolve_config once, after every override."
            )
