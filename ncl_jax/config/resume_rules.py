"""What may change when a run resumes: every config field classified once.

A workdir's `config.json` records the config its checkpoints were trained with; resuming
compares the new config with it field by field (`resume_differences`):
- MATHS_FIELDS change what is computed (the data, the model, the loss, the optimiser and
  schedule, the seed, the batch, the evaluation split and view that select the best
  checkpoints): a different value is refused, since the checkpoints would continue another
  run. `num_epochs` is one of them; extending a run to more epochs is the explicit step
  `ncl_jax.main --extend_to_epochs=N` (`check_extension`, docs/training.md#extending-a-run).
- RUNTIME_FIELDS change how the same run is executed, logged or reported (device counts,
  intervals, paths, input-pipeline settings, evaluation reporting): a different value is
  accepted and logged.
tests/test_config_rules.py holds every field of the base config to exactly one of the two, so
a new field cannot be forgotten. A field that only an older config.json has counts as maths.
"""

from __future__ import annotations

from typing import Any

from ncl_jax.core.optim import LENGTH_DEPENDENT_SCHEDULES
from ncl_jax.errors import ConfigError

MATHS_FIELDS = (
    "variant",
    "seed",
    "batch_size",
    "num_epochs",
    "steps_per_epoch",
    "sync_batch_stats",  # SyncBN statistics over the global batch, or per device
    "group_rule",  # the many/medium/few groups every evaluation reports
    "dataset.source",
    "dataset.name",
    "dataset.train_split",
    "dataset.eval_split",  # selects the best checkpoints
    "dataset.num_classes",
    "dataset.imbalance_factor",
    "dataset.subset_seed",
    "dataset.train_list",
    "dataset.eval_list",
    "dataset.image_size",
    "dataset.train_view",
    "dataset.key_view",
    "dataset.eval_view",
    "dataset.normalization",
    "dataset.on_bad_file",  # skip leaves files out of the training set
    "dataset.pipeline",  # tf.data and the device pipeline draw different augmentations
    "dataset.shuffle_buffer",  # the order of a streamed dataset
    "model.backbone",
    "model.num_experts",
    "model.depth",
    "model.width",
    "model.classifier",
    "model.cos_scale",
    "model.pretrained_path",  # names the initial weights
    "model.dtype",
    "model.bn_unbiased_variance",
    "loss.hard_ratio",
    "loss.num_hard",
    "loss.distill_weight",
    "loss.hard_distill_weight",
    "loss.nil_hard_weight",
    "loss.balanced",
    "loss.distill_balanced",
    "loss.hard_probs",
    "loss.nil_hard_set",
    "loss.anchor",
    "loss.distill_norm",
    "loss.distill_log_eps",
    "loss.teacher_stop_gradient",
    "moco.enabled",
    "moco.weight",
    "moco.dim",
    "moco.queue_size",
    "moco.temperature",
    "moco.momentum",
    "moco.ema_repeats",
    "moco.key_init",
    "moco.ema_projector",
    "moco.ema_before_keys",
    "optim.learning_rate",
    "optim.momentum",
    "optim.nesterov",
    "optim.weight_decay",
    "optim.schedule",
    "optim.warmup_epochs",
    "optim.warmup_factor",
    "optim.milestones",
    "optim.decay_factor",
    "optim.cosine_min_lr",
)

RUNTIME_FIELDS = (
    "preset_variant",  # which file preset the variant; the presets are compared themselves
    "cpu_devices",  # as XLA_FLAGS: the step's collectives make any device count equal
    "eval_batch_size",  # evaluation pads with a mask
    "eval_every_epochs",
    "eval_aggregation",  # reporting: the ensemble rule of the per-epoch evaluation
    "eval_tau",  # reporting: post-hoc adjustments also computed
    "log_every_steps",
    "checkpoint_every_epochs",
    "keep_checkpoints",
    "dataset.data_dir",  # where the same files are found
    "dataset.cache_path",  # where the same prepared cache is found (its checksum is checked)
    "dataset.image_root",
    "dataset.download",
    "dataset.eval_max_examples",  # smoke tests
    "dataset.cache",
    "dataset.prefetch",
    "dataset.num_parallel_calls",  # deterministic at any parallelism
    "model.expert_strategy",  # every strategy computes the same function
)


# Training records the pipeline `auto` chose (ncl_jax.training.loop), so a run resumes through
# the same one on any platform. Runs recorded before that saved "auto": they keep resuming
# through whatever `auto` picks now, as the versions that trained them did.
_SAVED_AUTO_ACCEPTS_ANY = ("dataset.pipeline",)


def resume_differences(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list, list]:
    """(refused, accepted): the dotted fields whose values differ between the flat `saved`
    and `current` configs, split by role; a field in neither list counts as maths."""
    keys = sorted(set(saved) | set(current))
    differ = [
        k
        for k in keys
        if saved.get(k) != current.get(k)
        and not (k in _SAVED_AUTO_ACCEPTS_ANY and saved.get(k) == "auto")
    ]
    return [k for k in differ if k not in RUNTIME_FIELDS], [
        k for k in differ if k in RUNTIME_FIELDS
    ]


def check_extension(saved: dict[str, Any], new_epochs: int) -> None:
    """ConfigError unless a run trained with the flat config `saved` can be extended to
    `new_epochs` epochs faithfully: only upwards, and only when the schedule's rate at each
    epoch does not depend on num_epochs. True of `warmup_multistep` (warm-up and milestones
    are fixed in epochs, so the epochs already trained keep their rates and the extension
    continues at the last rate, or decays at a milestone it reaches); false of `cosine`
    (LENGTH_DEPENDENT_SCHEDULES in ncl_jax.core.optim)."""
    old = saved.get("num_epochs")
    if not isinstance(old, int) or new_epochs <= old:
        raise ConfigError(
            f"--extend_to_epochs={new_epochs} must be more than the run's num_epochs={old}."
        )
    schedule = saved.get("optim.schedule")
    if schedule in LENGTH_DEPENDENT_SCHEDULES:
        raise ConfigError(
            f"--extend_to_epochs={new_epochs}: optim.schedule={schedule!r} "
            f"{LENGTH_DEPENDENT_SCHEDULES[schedule]}, so epochs 1-{old} were not trained as a "
            f"{new_epochs}-epoch run trains them; train --config.num_epochs={new_epochs} in a "
            "new --workdir instead."
        )
