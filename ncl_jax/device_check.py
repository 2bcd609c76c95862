"""One prepared accelerator check: the NCL train step over a grid of shapes, in one command.

  launch/device_check.sh OUT_DIR [--grid=auto|full|reduced] [--budget_s=420] [--overwrite]
  python -m ncl_jax.device_check --out=OUT_DIR ...        (`ncl-device-check` is the same)

The library: ncl_jax.perf.device_check.
"""

from __future__ import annotations

import time

from absl import flags

from ncl_jax.cli import run_app, run_cli
from ncl_jax.perf.device_check import FULL_BUDGET_S, REDUCED_BUDGET_S, run


def _define_flags() -> None:
    flags.DEFINE_string("out", None, "Directory for device_check.json and device_check.md.")
    flags.DEFINE_enum(
        "grid",
        "auto",
        ["auto", "full", "reduced"],
        "auto: full on GPU/TPU, reduced (tiny networks, fast compile) on a CPU-only host.",
    )
    flags.DEFINE_float(
        "budget_s",
        -1.0,
        f"Wall-time budget in seconds from the start (<= 0: {FULL_BUDGET_S:.0f} for the full "
        f"grid, {REDUCED_BUDGET_S:.0f} for the reduced one); rows that would end past it are "
        "skipped and listed.",
    )
    flags.DEFINE_bool("overwrite", False, "Replace an existing OUT_DIR/device_check.json.")
    flags.DEFINE_list("strategies", [], "Expert strategies, main first (default: vmap,loop).")
    flags.DEFINE_list("dtypes", [], "Compute dtypes, main first (default: float32,bfloat16).")
    flags.DEFINE_bool("list", False, "Print the ordered grid and exit; writes nothing.")


def main(argv) -> None:
    start = time.perf_counter()

    f = flags.FLAGS
    settings = {  # run()'s parameter for each flag
        "out_dir": f.out or "",
        "grid_kind": f.grid,
        "budget_s": f.budget_s,
        "overwrite": f.overwrite,
        "strategies": f.strategies,
        "dtypes": f.dtypes,
        "list_only": f.list,
    }
    run_cli(lambda: run(**settings, start=start))


def cli() -> None:
    """Console script `ncl-device-check`: the same as `python -m ncl_jax.device_check`."""

    run_app(main, define_flags=_define_flags)


if __name__ == "__main__":
    cli()
