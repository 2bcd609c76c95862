"""A finished or running workdir read back: its config (resolved once) and one checkpoint,
for the programs that evaluate, analyse or export a run."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import ml_collections

from ncl_jax import data
from ncl_jax.config import builders
from ncl_jax.config.variants import resolve_config
from ncl_jax.core.train_step import pmap_eval_counts_step, replicate
from ncl_jax.errors import CheckpointError
from ncl_jax.evaluation import test_distributions as test_distributions_module
from ncl_jax.evaluation.evaluate import eval_batches, run_evaluation
from ncl_jax.training import host_devices
from ncl_jax.training.checkpointing import RunCheckpoints
from ncl_jax.training.run_files import RESULT_FILE


def read_result(workdir: str) -> dict | None:
    """WORKDIR/result.json (design.md#contracts), or None before the run finished."""
    path = os.path.join(workdir, RESULT_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedRun:
    """A workdir's config and one restored checkpoint, ready to evaluate on this host."""

    workdir: str
    config: Any  # resolved ml_collections.ConfigDict from config.json (with eval overrides)
    info: Any  # data.DatasetInfo
    step_cfg: Any  # train_step.StepConfig
    state: Any  # TrainState, host numpy arrays
    kind: str  # checkpoint kind: checkpoints | best_ensemble | best_single
    step: int
    meta: dict  # what training saved beside the state (epoch, best, last_eval, ...)


def read_run_config(workdir: str, *, aggregation=None, taus=None) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (config.json), with the evaluation overrides
    applied, then resolved once (an older run's missing fields get their legacy values) and
    locked; read before anything starts JAX. Raises CheckpointError without config.json and
    ConfigError for a bad aggregation or tau."""
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise CheckpointError(
            f"{workdir} has no config.json: it is not an ncl_jax workdir "
            "(train into it with python -m ncl_jax.main first)."
        )
    with open(config_path) as f:
        config = ml_collections.ConfigDict(json.load(f))
    if aggregation is not None:
        config.eval_aggregation = aggregation
    if taus is not None:
        config.eval_tau = tuple(taus)
    config = resolve_config(config)
    builders.eval_options(config)  # a bad aggregation or tau fails here, before any work
    return config


def load_run(workdir: str, config, checkpoint: str | int | None = None) -> LoadedRun:
    """Restores one checkpoint of `workdir` (RunCheckpoints.select: None or "latest",
    "best_ensemble", "best_single", or a step) for the resolved `config` (read_run_config).
    Raises CheckpointError naming what exists when the checkpoint is missing, and what
    differs when it does not match the config. Beside a running training, the newest finished
    checkpoint is read (one rotated away meanwhile is replaced by the next newest)."""
    checkpoints = RunCheckpoints(workdir, read_only=True)
    try:
        checkpoints.select(checkpoint)  # a missing checkpoint fails before the dataset opens
        info = data.get_dataset_info(config.dataset)
        step_cfg = builders.make_step_config(
            config, class_counts=info.class_counts, steps_per_epoch=1
        )
        target = builders.abstract_state(config, step_cfg)
        kind, step, state, meta = checkpoints.restore_selected(checkpoint, target)
    finally:
        checkpoints.close()
    return LoadedRun(workdir, config, info, step_cfg, state, kind, step, meta)


def selection_note(kind: str, config) -> str:
    """How a checkpoint kind was chosen, for the JSON (best_* are selected on the eval split,
    as the paper and the official code do: the test set for CIFAR)."""
    split = config.dataset.eval_split
    if kind == "best_ensemble":
        return f"the epoch with the best ensemble top-1 on the {split!r} split"
    if kind == "best_single":
        return f"the epoch with the best single-expert top-1 on the {split!r} split"
    return "a periodic checkpoint (the final epoch once training finished); not selected"


def evaluate_saved_run(
    workdir: str,
    step: int | None = None,
    *,
    aggregation: str | None = None,
    taus: tuple[float, ...] | None = None,
    test_distributions: tuple[str, ...] | None = None,
    distribution_seed: int = 0,
    distributions_dir: str | None = None,
) -> dict:
    """Restores a checkpoint of `workdir` on however many devices are here and evaluates it.
    aggregation / taus override the run's eval_aggregation / eval_tau for this evaluation;
    test_distributions (names, evaluation.test_distributions) add the test-agnostic section,
    drawn with distribution_seed or read from distributions_dir's list files.
    Call it before anything starts JAX's backend: it splits a CPU host into devices first."""
    config = read_run_config(workdir, aggregation=aggregation, taus=taus)
    test_distributions_module.check_request(config, test_distributions, distributions_dir)
    # Evaluation uses running BatchNorm statistics, so splitting the host is always safe.
    host_devices.configure(
        int(config.get("cpu_devices", -1)), batch_sizes=(int(config.eval_batch_size),)
    )
    if test_distributions:
        with test_distributions_module.distribution_plan(
            config, test_distributions, seed=distribution_seed, list_dir=distributions_dir
        ) as plan:
            run = load_run(workdir, config, step)
            result = test_distributions_module.evaluate_with_distributions(
                plan, config, run.step_cfg, run.state, run.info.group_masks(config.group_rule)
            )
    else:
        run = load_run(workdir, config, step)
        result = run_evaluation(
            pmap_eval_counts_step(run.step_cfg),
            replicate(run.state),
            eval_batches(config),
            run.info.group_masks(config.group_rule),
            taus=run.step_cfg.eval.taus,
            aggregation=run.step_cfg.eval.aggregation,
        )
    return {
        "step": run.step,
        "checkpoint": run.kind,
        "selection": selection_note(run.kind, config),
        "epoch": run.meta.get("epoch"),
        **result,
    }
