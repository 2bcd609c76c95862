"""Tabulates the runs under a directory: one row per setting, mean and std over seeds.

  python -m ncl_jax.report runs/beta        # prints the table, writes report.md and report.csv
  python -m ncl_jax.report --workdir=runs/beta   # the same
  python -m ncl_jax.report runs/beta --curves    # also curves.csv, curves_top1/_groups.png

The library: ncl_jax.analysis.report.
"""

from __future__ import annotations

import os

from absl import flags

from ncl_jax.analysis.learning_curves import write_curves
from ncl_jax.analysis.report import write_report
from ncl_jax.cli import run_app, run_cli
from ncl_jax.errors import ConfigError


def main(argv) -> None:
    def go():
        dirs = [*argv[1:], *([flags.FLAGS.workdir] if flags.FLAGS.workdir else [])]
        if len(dirs) != 1:
            raise ConfigError(
                "give one directory of runs: python -m ncl_jax.report RUNS_DIR "
                "(or --workdir=RUNS_DIR)"
            )
        markdown, path = write_report(dirs[0])
        print(markdown)
        print(f"wrote {path} and {os.path.splitext(path)[0]}.csv")
        if flags.FLAGS.curves:
            print("wrote " + ", ".join(write_curves(dirs[0])))

    run_cli(go)


def _define_flags() -> None:
    flags.DEFINE_string(
        "workdir", None, "Directory of runs (a sweep's --workdir); or give it as the argument."
    )
    flags.DEFINE_bool(
        "curves",
        False,
        "Also write curves.csv (every evaluated epoch of every run) and the learning-curve "
        "figures curves_top1.png and curves_groups.png.",
    )


def cli() -> None:
    """Console script `ncl-report`: the same as `python -m ncl_jax.report`."""

    run_app(main, define_flags=_define_flags, takes_arguments=True)


if __name__ == "__main__":
    cli()
