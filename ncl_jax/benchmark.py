"""Throughput and memory of the full NCL train step (and of the input pipeline).

  python -m ncl_jax.benchmark --config=configs/cifar100_lt.py --config.batch_size=128
  python -m ncl_jax.benchmark --config=configs/cifar100_lt.py --config.batch_size=128 \\
      --mode=step --experts=1,3 --moco=both --strategies=loop,vmap
  python -m ncl_jax.benchmark --config=configs/imagenet_lt.py --mode=cost --experts=1,3 \\
      --moco=both
  python -m ncl_jax.benchmark --config=configs/cifar10_lt.py:quick --mode=input_step --steps=50

The library: ncl_jax.perf.benchmark.
"""

from __future__ import annotations

import json

from absl import flags
from ml_collections import config_flags

from ncl_jax.cli import run_app, run_cli
from ncl_jax.perf.benchmark import run
from ncl_jax.training import host_devices


def _define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. configs/cifar100_lt.py (as for ncl_jax.main)."
    )
    flags.DEFINE_enum(
        "mode",
        "all",
        ["step", "pipeline", "all", "cost", "input_step"],
        "What to time: the train step (no TensorFlow), the tf.data input "
        "pipeline, or both (the pipeline is skipped with a note when its "
        "data or TensorFlow is missing); step and all also print the model cost "
        "(parameters, XLA flops per image), which cost prints alone, compiling nothing; "
        "input_step: the real dataset through the tfdata and the device pipeline, each "
        "alone and feeding the step, alternating (--steps batches per repeat).",
    )
    flags.DEFINE_integer("steps", 10, "Timed steps per repeat.")
    flags.DEFINE_integer("warmup", 2, "Untimed steps after compiling.")
    flags.DEFINE_integer("repeats", 3, "Timed repeats; the median is reported.")
    flags.DEFINE_list("experts", [], "Values of K to time (default: model.num_experts).")
    flags.DEFINE_enum(
        "moco",
        "config",
        ["config", "on", "off", "both"],
        "Self-supervision branch: as configured, forced on/off, or both.",
    )
    flags.DEFINE_list(
        "strategies", [], "Expert strategies to time (default: model.expert_strategy)."
    )
    flags.DEFINE_integer("pipeline_batches", 20, "Timed input batches.")


def main(argv) -> None:
    def go():
        host_devices.configure_for(flags.FLAGS.config)  # as ncl_jax.main does, before JAX starts
        summary = run(
            flags.FLAGS.config,
            mode=flags.FLAGS.mode,
            steps=flags.FLAGS.steps,
            warmup=flags.FLAGS.warmup,
            repeats=flags.FLAGS.repeats,
            experts=flags.FLAGS.experts,
            moco=flags.FLAGS.moco,
            strategies=flags.FLAGS.strategies,
            pipeline_batches=flags.FLAGS.pipeline_batches,
        )
        print(json.dumps(summary))

    run_cli(go)


def cli() -> None:
    """Console script `ncl-benchmark`: the same as `python -m ncl_jax.benchmark`."""

    run_app(main, define_flags=_define_flags, required=("config",))


if __name__ == "__main__":
    cli()
