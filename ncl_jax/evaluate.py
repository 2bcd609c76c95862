"""Evaluation: top-1 overall and on many/medium/few classes, per expert and for the ensemble.

As in the official code, predictions use the raw logits (no prior correction) and the
ensemble is the argmax of the mean of the K experts' logits. Used every epoch by the training
loop and, as a CLI, on any Orbax checkpoint of a workdir, on any number of devices:

  python -m ncl_jax.evaluate --workdir=DIR [--step=N]   # prints a table, writes DIR/eval_<N>.json
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np

from ncl_jax.metrics import GROUPS, evaluation_result


def evaluation_counts(p_eval_counts, replicated_state, batches: Iterable[dict]):
    """Runs the pmapped per-class counting step over all eval batches (padded, masked):
    correct [T, K + 1, C] (per tau: experts, then the ensemble) and totals [C], on the host."""
    from ncl_jax.train_step import unreplicate

    correct = totals = None
    for batch in batches:
        # psum'ed over the pmap axis, which spans the devices of every process.
        c, t = unreplicate(p_eval_counts(replicated_state, batch))
        correct = c if correct is None else correct + c
        totals = t if totals is None else totals + t
    if correct is None:
        raise ValueError("the evaluation split is empty; check dataset.eval_split.")
    return correct, totals


def run_evaluation(
    p_eval_counts,
    replicated_state,
    batches: Iterable[dict],
    group_masks: dict[str, np.ndarray],
    *,
    taus=(0.0,),
    aggregation: str = "mean_logits",
) -> dict:
    """The evaluation JSON (metrics.evaluation_result) of `evaluation_counts`; taus and
    aggregation must be those the step was built with (StepConfig.eval_*)."""
    correct, totals = evaluation_counts(p_eval_counts, replicated_state, batches)
    return evaluation_result(correct, totals, group_masks, taus=taus, aggregation=aggregation)


def validate_eval_options(config) -> None:
    """ConfigError for an unknown eval_aggregation or a non-numeric eval_tau."""
    from ncl_jax.errors import ConfigError
    from ncl_jax.metrics import AGGREGATIONS

    aggregation = config.get("eval_aggregation", "mean_logits")
    if aggregation not in AGGREGATIONS:
        raise ConfigError(
            f"eval_aggregation={aggregation!r} is unknown; use one of {AGGREGATIONS}."
        )
    try:
        [float(t) for t in config.get("eval_tau", (0.0,))]
    except (TypeError, ValueError):
        raise ConfigError(
            f"eval_tau={config.get('eval_tau')!r} must be numbers, e.g. (0.0, 0.5, 1.0)."
        ) from None


def format_table(result: dict) -> str:
    """Fixed-width tables of the evaluation JSON: raw logits, then each logit adjustment."""
    tables = [_table(result)]
    for tau, body in result.get("logit_adjusted", {}).items():
        tables.append(f"logit adjustment tau={tau}:\n" + _table(body))
    return "\n\n".join(tables)


def _table(result: dict) -> str:
    header = f"{'model':<14}{'top1':>8}" + "".join(f"{g:>8}" for g in GROUPS)
    fmt = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"
    rows = [(f"expert {i}", e) for i, e in enumerate(result["experts"])]
    rows += [
        ("ensemble", result["ensemble"]),
        (f"best single({result['best_single']['expert']})", result["best_single"]),
    ]
    lines = [header, "-" * len(header)]
    lines += [
        f"{name:<14}" + fmt(r["top1"]) + "".join(fmt(r[g]) for g in GROUPS) for name, r in rows
    ]
    return "\n".join(lines)


def write_result(workdir: str, step: int, result: dict) -> str:
    """Writes DIR/eval_<step>.json atomically (never a half-written file)."""
    from ncl_jax.checkpointing import write_json_atomically

    path = os.path.join(workdir, f"eval_{step}.json")
    write_json_atomically(path, {**result, "step": step})
    return path


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedRun:
    """A workdir's config and one restored checkpoint, ready to evaluate on this host."""

    workdir: str
    config: Any  # ml_collections.ConfigDict as saved in config.json (with any overrides)
    info: Any  # data.DatasetInfo
    step_cfg: Any  # train_step.StepConfig
    state: Any  # TrainState, host numpy arrays
    kind: str  # checkpoint kind: checkpoints | best_ensemble | best_single
    step: int
    meta: dict  # what training saved beside the state (epoch, best, last_eval, ...)


def read_run_config(workdir: str, *, aggregation=None, taus=None):
    """The ConfigDict a workdir was trained with (config.json), with evaluation overrides;
    read before anything starts JAX. Raises CheckpointError without config.json and
    ConfigError for a bad aggregation/tau."""
    import ml_collections

    from ncl_jax.errors import CheckpointError

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
    validate_eval_options(config)
    return config


def load_run(workdir: str, config, checkpoint: str | int | None = None) -> LoadedRun:
    """Restores one checkpoint of `workdir` (RunCheckpoints.select: None or "latest",
    "best_ensemble", "best_single", or a step). Raises CheckpointError naming what exists
    when the checkpoint is missing, and what differs when it does not match the config."""
    from ncl_jax import builders, data
    from ncl_jax.checkpointing import RunCheckpoints

    checkpoints = RunCheckpoints(workdir, read_only=True)
    try:
        kind, step = checkpoints.select(checkpoint)
        info = data.get_dataset_info(config.dataset)
        step_cfg = builders.make_step_config(
            config, class_counts=info.class_counts, steps_per_epoch=1
        )
        state, meta = checkpoints.restore(kind, step, builders.abstract_state(config, step_cfg))
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


def eval_batches(config):
    """The evaluation split as device-sharded batches for however many devices are here."""
    from ncl_jax import data

    return data.eval_iterator(
        config.dataset,
        global_batch_size=data.eval_batch_for(config.eval_batch_size, jax.device_count()),
        num_local_devices=jax.local_device_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def evaluate_workdir(
    workdir: str,
    step: int | None = None,
    *,
    aggregation: str | None = None,
    taus: tuple[float, ...] | None = None,
) -> dict:
    """Restores a checkpoint of `workdir` on however many devices are here and evaluates it.
    aggregation / taus override the run's eval_aggregation / eval_tau for this evaluation."""
    from ncl_jax import host_devices
    from ncl_jax.train_step import pmap_eval_counts_step, replicate

    config = read_run_config(workdir, aggregation=aggregation, taus=taus)
    # Evaluation uses running BatchNorm statistics, so splitting the host is always safe.
    host_devices.configure(
        int(config.get("cpu_devices", -1)), batch_sizes=(int(config.eval_batch_size),)
    )
    run = load_run(workdir, config, step)
    result = run_evaluation(
        pmap_eval_counts_step(run.step_cfg),
        replicate(run.state),
        eval_batches(config),
        run.info.group_masks(config.group_rule),
        taus=run.step_cfg.eval_taus,
        aggregation=run.step_cfg.eval_aggregation,
    )
    return {
        "step": run.step,
        "checkpoint": run.kind,
        "selection": selection_note(run.kind, config),
        "epoch": run.meta.get("epoch"),
        **result,
    }


def main(argv) -> None:
    del argv
    from absl import flags

    from ncl_jax.cli import parse_numbers, run_cli

    f = flags.FLAGS
    run_cli(lambda: _print_and_write(f.workdir, f.step, f.aggregation, parse_numbers(f.tau, "tau")))


def _print_and_write(workdir: str, step: int | None, aggregation, taus) -> None:
    result = evaluate_workdir(workdir, step, aggregation=aggregation, taus=taus)
    print(format_table(result))
    if jax.process_index() == 0:
        print(f"wrote {write_result(workdir, result['step'], result)}")


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("workdir", None, "Training workdir holding config.json and checkpoints.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest periodic/final).")
    flags.DEFINE_enum(
        "aggregation",
        None,
        ["mean_logits", "mean_probs"],
        "Ensemble: mean of the experts' logits (paper) or probabilities (default: the run's).",
    )
    flags.DEFINE_list(
        "tau", None, "Post-hoc logit adjustments to report besides raw logits, e.g. 0.5,1."
    )


def cli() -> None:
    """Console script `ncl-evaluate`: the same as `python -m ncl_jax.evaluate`."""
    from ncl_jax.cli import run_app

    run_app(main, define_flags=_define_flags, required=("workdir",))


if __name__ == "__main__":
    cli()
