"""A grid of config overrides times seeds, one training run each (`ncl-sweep`).

  python -m ncl_jax.sweep --config=configs/cifar100_lt.py:if100 \\
      --sweep=loss.hard_ratio=0.1,0.3,0.5 [--sweep=FIELD=v1,v2 ...] --seeds=3 --workdir=runs/beta
  python -m ncl_jax.sweep ... --list              # the runs, one `ncl_jax.main` command each
  python -m ncl_jax.sweep ... --task=$SLURM_ARRAY_TASK_ID   # one run (launch/slurm_sweep.sbatch)

The library: ncl_jax.training.sweep.
"""

from __future__ import annotations

import sys

from absl import flags, logging
from ml_collections import config_flags

from ncl_jax.cli import run_app, run_cli
from ncl_jax.errors import ConfigError
from ncl_jax.training.sweep import (
    command,
    execute,
    parse_axes,
    plan,
    run_state,
    validate_runs,
    write_plan,
)


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", None, "Config file and argument, as for main.")
    flags.DEFINE_multi_string("sweep", [], "FIELD=v1,v2 (or A+B=v1,v2): one axis of the grid.")
    flags.DEFINE_integer("seeds", 1, "Training seeds per setting: config.seed, +1, ...")
    flags.DEFINE_integer(
        "subset_seeds", 0, "Long-tailed subset seeds 0..N-1 per setting (0: the config's)."
    )
    flags.DEFINE_string("workdir", None, "Root directory of the sweep.")
    flags.DEFINE_boolean("list", False, "Print the runs (one main command each) and exit.")
    flags.DEFINE_integer("task", None, "Run only this 0-based run index (SLURM array task).")


def _config_argument(argv: list[str]) -> str:
    """The --config value as given (passed on to every run's main)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    raise ConfigError("--config is required.")


def main(argv) -> None:
    f = flags.FLAGS
    config_arg = _config_argument(sys.argv)
    # Plain --config.x=v overrides apply to every run.
    extra = [a for a in sys.argv[1:] if a.startswith("--config.")]

    def go():
        axes = parse_axes(f.sweep, f.config)
        runs = plan(f.config, axes, seeds=f.seeds, subset_seeds=f.subset_seeds, workdir=f.workdir)
        validate_runs(f.config, runs)
        if f.list:
            for run in runs:
                print(f"{run_state(run.workdir):>10}  " + " ".join(command(config_arg, run, extra)))
            return
        if f.task is not None:
            if not 0 <= f.task < len(runs):
                raise ConfigError(f"--task={f.task}: the sweep has runs 0..{len(runs) - 1}.")
            runs = [runs[f.task]]
        else:
            write_plan(f.workdir, config_arg, axes, runs)
        outcome = execute(config_arg, runs, extra, log=print)
        print(
            f"sweep {f.workdir}: {outcome['finished']} trained, {outcome['skipped']} already "
            f"finished, {outcome['failed']} failed; `python -m ncl_jax.report {f.workdir}` "
            "tabulates them."
        )
        if outcome["failed"]:
            sys.exit(1)

    del argv
    logging.set_verbosity(logging.WARNING)
    run_cli(go)


def cli() -> None:
    """Console script `ncl-sweep`: the same as `python -m ncl_jax.sweep`."""

    run_app(main, define_flags=_define_flags, required=("config", "workdir"))


if __name__ == "__main__":
    cli()
