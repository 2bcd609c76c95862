"""Analysis of trained runs (`ncl-analyze`): the paper's figures, per-class accuracy,
calibration, confusions, written to --out without overwriting (ncl_jax.analysis.analyze).

  python -m ncl_jax.analyze --workdir=runs/ncl --compare=runs/bsce,runs/bsce_seed43 \\
      [--checkpoint=latest|best_ensemble|best_single|STEP] [--aggregation=mean_logits] \\
      [--tau=0.5,1] [--test_distributions=agnostic] [--distribution_seed=0] \\
      [--test_distributions_dir=DIR] --out=analysis/ncl_vs_bsce

--test_distributions adds the test-agnostic evaluation of every run (as in ncl_jax.evaluate)
and the figure test_distributions.png.
"""

from __future__ import annotations

from absl import flags

from ncl_jax.analysis.analyze import analyze
from ncl_jax.cli import parse_numbers, run_app, run_cli
from ncl_jax.core.metrics import AGGREGATIONS
from ncl_jax.evaluation.distribution_sets import (
    define_distribution_flags,
    parse_test_distributions,
)
from ncl_jax.training.checkpointing import parse_checkpoint


def compare_list(values: list[str]) -> list[str]:
    """--compare given once with commas, repeated, or both, as one list of workdirs."""
    return [w for value in values or [] for w in value.split(",") if w]


def main(argv) -> None:
    del argv

    f = flags.FLAGS
    run_cli(
        lambda: analyze(
            [f.workdir, *compare_list(f.compare)],
            f.out,
            checkpoint=parse_checkpoint(f.checkpoint),
            aggregation=f.aggregation,
            taus=parse_numbers(f.tau, "tau"),
            overwrite=f.overwrite,
            test_distributions=parse_test_distributions(f.test_distributions),
            distribution_seed=f.distribution_seed,
            distributions_dir=f.test_distributions_dir,
        )
    )


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "The run to analyse (training workdir).")
    flags.DEFINE_multi_string(
        "compare", [], "Runs to overlay, evaluated on the same data (repeat it, or a,b,c)."
    )
    flags.DEFINE_string(
        "checkpoint", None, "latest (default) | best_ensemble | best_single | a step number."
    )
    flags.DEFINE_string("out", None, "Directory for analysis.json and the figures.")
    flags.DEFINE_enum(
        "aggregation",
        None,
        list(AGGREGATIONS),
        "Ensemble: mean of the experts' logits (paper) or probabilities (default: the run's).",
    )
    flags.DEFINE_list("tau", None, "Post-hoc logit adjustments to report besides raw logits.")
    flags.DEFINE_bool("overwrite", False, "Replace an earlier analysis in --out.")
    define_distribution_flags()


def cli() -> None:
    """Console script `ncl-analyze`: the same as `python -m ncl_jax.analyze`."""

    run_app(main, define_flags=_define_flags, required=("workdir", "out"))


if __name__ == "__main__":
    cli()
