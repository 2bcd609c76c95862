"""Compares the logged training curves of runs (`ncl-curves`), e.g. float32 against bfloat16.

  python -m ncl_jax.curves runs/quick_fp32 runs/quick_bf16 [--tags=train/loss] \\
      [--plot=curves.png]

The library: ncl_jax.analysis.curves.
"""

from __future__ import annotations

import json
import os

from absl import flags

from ncl_jax.analysis.curves import DEFAULT_TAGS, compare, plot, read_scalars
from ncl_jax.cli import run_app, run_cli
from ncl_jax.errors import ConfigError


def main(argv) -> None:
    f = flags.FLAGS
    workdirs = argv[1:]

    def go():
        if len(workdirs) < 2:
            raise ConfigError("give two or more workdirs: the first is the reference.")
        scalars = [read_scalars(w) for w in workdirs]
        for tag in f.tags:
            missing = [w for w, s in zip(workdirs, scalars, strict=True) if tag not in s]
            if missing:
                raise ConfigError(f"{missing[0]} logged no {tag!r}; see its TensorBoard tags.")
            result = compare([s[tag] for s in scalars])
            for workdir, d in zip(workdirs[1:], result["differences"], strict=True):
                print(
                    f"{tag}: {workdir} vs {workdirs[0]} over {d['steps']} logged steps: "
                    f"max |diff| {d['max_abs']:.4g} (max relative {d['max_rel']:.2%}), "
                    f"mean |diff| {d['mean_abs']:.4g}"
                )
        for workdir in workdirs:
            result_path = os.path.join(workdir, "result.json")
            if os.path.exists(result_path):
                with open(result_path) as fh:
                    final = json.load(fh)["final"]
                experts = ", ".join(f"{e['top1']:.2f}" for e in final["experts"])
                print(
                    f"{workdir}: final ensemble top-1 {final['ensemble']['top1']:.2f}, "
                    f"experts {experts}"
                )
        if f.plot:
            print(f"wrote {plot(workdirs, scalars, f.tags[0], f.plot)}")

    run_cli(go)


def _define_flags() -> None:
    flags.DEFINE_list("tags", list(DEFAULT_TAGS), "Scalar tags to compare.")
    flags.DEFINE_string("plot", None, "Also draw the first tag's curves to this PNG.")


def cli() -> None:
    """Console script `ncl-curves`: the same as `python -m ncl_jax.curves`."""

    run_app(main, define_flags=_define_flags, takes_arguments=True)


if __name__ == "__main__":
    cli()
