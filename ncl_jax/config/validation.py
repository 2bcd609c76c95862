"""Config validation: every check that needs no data and no compilation, on a resolved config,
so a bad config fails in a second with one line (`ConfigError`) that names the field and the
fix, before a workdir is created.

In order: fields the base config does not have (named with the nearest fields), values of the
wrong type (the type of the field's default in `config/base.py`), values outside the field's
fixed set of choices (`CHOICES`) or numeric range (`RANGES`), then the rules that tie fields
together (hard classes below the class count, the batch over the devices, the MoCo queue over
the batch). `validate_fields` needs no devices; `validate_config` adds the device split.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import ml_collections

from ncl_jax.cli import not_a_field_message
from ncl_jax.config.base import get_base_config
from ncl_jax.config.variants import DERIVED, PRESETS, VARIANTS, require_resolved
from ncl_jax.core.losses import ANCHORS, DISTILL_NORMS, HARD_PROBS, NIL_HARD_SETS
from ncl_jax.core.metrics import AGGREGATIONS
from ncl_jax.core.moco import KEY_INITS
from ncl_jax.core.optim import SCHEDULES
from ncl_jax.data.choices import DOWNLOAD_VALUES, SOURCES, VIEWS
from ncl_jax.data.device_pipeline import PIPELINES
from ncl_jax.data.file_check import ON_BAD_FILE
from ncl_jax.data.long_tail import GROUP_RULES
from ncl_jax.data.normalization import NORMALIZATION
from ncl_jax.errors import ConfigError
from ncl_jax.models import BACKBONES, CLASSIFIERS, DTYPES, STRATEGIES

# Every field with a fixed set of values -> that set, as defined by the code that implements
# the choice (one list per field; nothing here is a second copy).
CHOICES: dict[str, tuple] = {
    "variant": VARIANTS,
    "preset_variant": ("", *VARIANTS),
    "dataset.source": SOURCES,
    "dataset.download": DOWNLOAD_VALUES,
    "dataset.train_view": VIEWS,
    "dataset.key_view": VIEWS,
    "dataset.eval_view": VIEWS,
    "dataset.normalization": tuple(NORMALIZATION),
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
    "dataset.on_bad_file": ON_BAD_FILE,
    "dataset.pipeline": PIPELINES,
}
# Read case-insensitively: a command-line string ("False") means the same as the Python value.
_CASE_INSENSITIVE = ("dataset.download",)


@dataclasses.dataclass(frozen=True)
class Range:
    """The numbers a field accepts: low <= x <= high (< where open; None: unbounded), or one
    of the `special` values, each with a meaning of its own (-1: automatic). A tuple field's
    every element must be in range."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    special: tuple = ()

    def __contains__(self, x) -> bool:
        if x in self.special:
            return True
        above = self.low is None or (x > self.low if self.low_open else x >= self.low)
        below = self.high is None or (x < self.high if self.high_open else x <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            text = f"{'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = (
                f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                f"{')' if self.high_open else ']'}"
            )
        return " or ".join([*(f"{s:g}" for s in self.special), text])


AT_LEAST_1 = Range(1)
AUTO_OR_AT_LEAST_1 = Range(1, special=(-1,))  # -1: the automatic value the field documents
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
UNIT = Range(0, 1, high_open=True)  # a momentum

# Every numeric field with a bound -> its range, declared once here (fields left out take any
# number: seed, eval_tau).
RANGES: dict[str, Range] = {
    "batch_size": AT_LEAST_1,
    "eval_batch_size": AT_LEAST_1,
    "num_epochs": AT_LEAST_1,
    "steps_per_epoch": AUTO_OR_AT_LEAST_1,
    "cpu_devices": AUTO_OR_AT_LEAST_1,
    "eval_every_epochs": AT_LEAST_1,
    "log_every_steps": AT_LEAST_1,
    "checkpoint_every_epochs": AT_LEAST_1,
    "keep_checkpoints": AT_LEAST_1,
    "dataset.num_classes": Range(2),
    "dataset.imbalance_factor": Range(1, special=(0,)),  # 0 keeps the split as it is
    "dataset.subset_seed": NON_NEGATIVE,
    "dataset.image_size": AT_LEAST_1,
    "dataset.eval_max_examples": Range(0, special=(-1,)),  # -1 or 0: every example
    "dataset.shuffle_buffer": AT_LEAST_1,
    "dataset.prefetch": NON_NEGATIVE,
    "dataset.num_parallel_calls": AUTO_OR_AT_LEAST_1,
    "model.num_experts": AT_LEAST_1,
    "model.depth": AUTO_OR_AT_LEAST_1,
    "model.width": AUTO_OR_AT_LEAST_1,
    "model.cos_scale": POSITIVE,
    "loss.hard_ratio": Range(0, 1, low_open=True, high_open=True),
    "loss.num_hard": AT_LEAST_1,
    "loss.distill_weight": NON_NEGATIVE,  # 0 removes the term
    "loss.hard_distill_weight": NON_NEGATIVE,
    "loss.nil_hard_weight": NON_NEGATIVE,
    "loss.distill_log_eps": NON_NEGATIVE,
    "moco.weight": NON_NEGATIVE,
    "moco.dim": AT_LEAST_1,
    "moco.queue_size": AT_LEAST_1,
    "moco.temperature": POSITIVE,
    "moco.momentum": UNIT,
    "moco.ema_repeats": AT_LEAST_1,
    "optim.learning_rate": POSITIVE,
    "optim.momentum": UNIT,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.warmup_epochs": NON_NEGATIVE,
    "optim.warmup_factor": Range(0, 1, low_open=True),
    "optim.milestones": AT_LEAST_1,
    "optim.decay_factor": POSITIVE,  # > 1 grows the rate (tests provoke divergence so)
    "optim.cosine_min_lr": NON_NEGATIVE,
}


@dataclasses.dataclass(frozen=True)
class FieldType:
    """What a field holds, from its default in config/base.py: `kind` (for a tuple, the kind
    of its elements), and whether None is a value of its own (dataset.data_dir)."""

    kind: type
    is_tuple: bool
    none_allowed: bool

    def accepts(self, value) -> bool:
        if value is None:
            return self.none_allowed
        if self.is_tuple:
            return isinstance(value, tuple | list) and all(map(self._accepts_one, value))
        return self._accepts_one(value)

    def _accepts_one(self, value) -> bool:
        if isinstance(value, bool):  # a bool is an int to Python, never to a config
            return self.kind is bool
        if self.kind is float:
            return isinstance(value, int | float)
        return isinstance(value, self.kind)

    def __str__(self) -> str:
        return f"a tuple of {self.kind.__name__}" if self.is_tuple else self.kind.__name__


@functools.cache
def field_types() -> dict[str, FieldType]:
    """Every field of the base config (dotted) -> its FieldType."""
    out = {}

    def walk(node: ml_collections.ConfigDict, prefix: str) -> None:
        for key in node.keys():
            value = node[key]
            if isinstance(value, ml_collections.ConfigDict):
                walk(value, f"{prefix}{key}.")
            elif isinstance(value, tuple):
                kinds = {type(v) for v in value} or {float}
                out[prefix + key] = FieldType(float if float in kinds else kinds.pop(), True, False)
            else:
                # None is a value of its own only where resolve_config does not fill it (there
                # it means "not resolved", which require_resolved names).
                own_none = value is None and prefix + key not in (*PRESETS, *DERIVED)
                out[prefix + key] = FieldType(node.get_type(key), False, own_none)

    walk(get_base_config(), "")
    return out


def leaves(config) -> dict[str, Any]:
    """The config's fields, dotted, with their values (sections walked, not returned)."""
    out = {}

    def walk(node, prefix: str) -> None:
        for key in node.keys():
            value = node[key]
            if isinstance(value, ml_collections.ConfigDict | dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[prefix + key] = value

    walk(config, "")
    return out


def validate_fields(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError for the first field that is unknown, of the wrong type, outside its
    choices or range, or inconsistent with another field; needs no devices and no data.
    `config` must be resolved (ncl_jax.config.variants.resolve_config)."""
    _check_each_field(config)
    _check_together(config)


def validate_config(
    config: ml_collections.ConfigDict, *, num_devices: int, num_processes: int = 1
) -> None:
    """`validate_fields` plus the global batch split over `num_devices`: raises ConfigError
    for the first problem, before any compute; `config` must be resolved."""
    _check_each_field(config)
    size = config.batch_size
    if size % num_devices:
        raise ConfigError(
            f"batch_size={size} does not split over {num_devices} devices "
            f"({num_processes} processes); use a multiple of {num_devices}."
        )
    _check_together(config)


def _check_each_field(config: ml_collections.ConfigDict) -> None:
    require_resolved(config)
    types = field_types()
    values = leaves(config)
    for dotted in values:
        if dotted not in types:
            raise ConfigError(not_a_field_message(dotted, types))
    for dotted, value in values.items():
        if not types[dotted].accepts(value):
            raise ConfigError(f"{dotted}={value!r} must be {types[dotted]}.")
    for dotted, choices in CHOICES.items():
        value = values[dotted]
        key = str(value).strip().lower() if dotted in _CASE_INSENSITIVE else value
        if key not in choices:
            raise ConfigError(f"{dotted}={value!r} is unknown; use one of {choices}.")
    for dotted, allowed in RANGES.items():
        value = values[dotted]
        if not all(v in allowed for v in (value if isinstance(value, tuple | list) else [value])):
            raise ConfigError(f"{dotted}={value!r} is out of range; it must be {allowed}.")


def _check_together(config: ml_collections.ConfigDict) -> None:
    c = config.dataset.num_classes
    num_hard = config.loss.num_hard
    if not 1 <= num_hard < c:
        raise ConfigError(
            f"loss.num_hard resolves to {num_hard} hard negatives for {c} classes; it must be in "
            f"[1, {c - 1}] (set loss.num_hard or loss.hard_ratio)."
        )
    if config.moco.enabled:
        n, b = config.moco.queue_size, config.batch_size
        if n < b or n % b:
            raise ConfigError(
                f"moco.queue_size={n} must be a positive multiple of the global batch_size={b} "
                "(whole batches are enqueued)."
            )
