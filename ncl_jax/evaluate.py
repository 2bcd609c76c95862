"""Evaluates any checkpoint of a workdir on any number of devices (`ncl-evaluate`).

  python -m ncl_jax.evaluate --workdir=DIR [--step=N] [--aggregation=mean_probs] [--tau=0.5,1]
      [--test_distributions=agnostic|forward50,uniform,...] [--distribution_seed=0]
      [--test_distributions_dir=DIR]

Prints the per-expert / ensemble / best-single table (top-1 and many/medium/few, raw logits,
then each post-hoc logit adjustment) and writes DIR/eval_<step>.json
(ncl_jax.evaluation.evaluate). --test_distributions adds top-1 under test class distributions
(ncl_jax.evaluation.test_distributions): `agnostic` for SADE's eleven, forward50 ... backward50;
drawn from the evaluation split with --distribution_seed for TFDS sources, read from SADE's
list files in --test_distributions_dir for split-list datasets.
"""

from __future__ import annotations

import os

import jax
from absl import flags

from ncl_jax.cli import parse_numbers, run_app, run_cli
from ncl_jax.core.metrics import AGGREGATIONS
from ncl_jax.evaluation.distribution_sets import (
    define_distribution_flags,
    parse_test_distributions,
)
from ncl_jax.evaluation.evaluate import format_table
from ncl_jax.evaluation.test_distributions import format_distributions
from ncl_jax.training.run_files import write_json_atomically
from ncl_jax.training.saved_runs import evaluate_saved_run


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Training workdir holding config.json and checkpoints.")
    flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest periodic/final).")
    flags.DEFINE_enum(
        "aggregation",
        None,
        list(AGGREGATIONS),
        "Ensemble: mean of the experts' logits (paper) or probabilities (default: the run's).",
    )
    flags.DEFINE_list(
        "tau", None, "Post-hoc logit adjustments to report besides raw logits, e.g. 0.5,1."
    )
    define_distribution_flags()


def write_result(workdir: str, step: int, result: dict) -> str:
    """Writes DIR/eval_<step>.json atomically (never a half-written file)."""
    path = os.path.join(workdir, f"eval_{step}.json")
    write_json_atomically(path, {**result, "step": step})
    return path


def main(argv) -> None:
    del argv
    f = flags.FLAGS

    def run() -> None:
        names = parse_test_distributions(f.test_distributions)
        result = evaluate_saved_run(
            f.workdir,
            f.step,
            aggregation=f.aggregation,
            taus=parse_numbers(f.tau, "tau"),
            test_distributions=names,
            distribution_seed=f.distribution_seed,
            distributions_dir=f.test_distributions_dir,
        )
        print(format_table(result))
        if "test_distributions" in result:
            print("test distributions (ensemble raw / prior-adjusted; best single raw):")
            print(format_distributions(result["test_distributions"]))
        if jax.process_index() == 0:
            print(f"wrote {write_result(f.workdir, result['step'], result)}")

    run_cli(run)


def cli() -> None:
    """Console script `ncl-evaluate`: the same as `python -m ncl_jax.evaluate`."""
    run_app(main, define_flags=_define_flags, required=("workdir",))


if __name__ == "__main__":
    cli()
