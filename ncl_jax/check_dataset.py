"""Decodes every image file of a dataset once and lists the bad ones (`ncl-check-dataset`).

  python -m ncl_jax.check_dataset --config=configs/imagenet_lt.py \\
      --config.dataset.image_root=/data/imagenet \\
      --config.dataset.train_list=/data/ImageNet_LT_train.txt \\
      --config.dataset.eval_list=/data/ImageNet_LT_test.txt [--threads=32]

For a split-list or image-folder dataset being prepared (ImageNet-LT, Places-LT,
iNaturalist): every file the config's training and evaluation splits read is decoded as the
input pipeline decodes it and held to its view's size rule, in parallel threads with a
progress bar. Prints one line per bad file (its path and what is wrong) and a summary line;
exits with 1 when a file is bad, 0 when none is, 2 for a config or dataset that cannot be
opened. Training itself checks only headers (docs/data.md, "Bad image files"). The library:
ncl_jax.data.datasets.check_all_files.
"""

from __future__ import annotations

import os
import sys
import time

from absl import flags
from ml_collections import config_flags

from ncl_jax.cli import run_app, run_cli
from ncl_jax.config.variants import resolve_config
from ncl_jax.data.file_check import THREADS

_SPLITS = {"train": "training", "eval": "evaluation"}


def _define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. configs/imagenet_lt.py (as for ncl_jax.main)."
    )
    flags.DEFINE_integer("threads", THREADS, "Files read and decoded at once.", lower_bound=1)


def main(argv) -> None:
    del argv

    def run() -> int:
        config = resolve_config(flags.FLAGS.config)
        # TensorFlow logs a warning or two for every file it fails to decode; the lines printed
        # here say the same with the file's name. It reads this once, when it is imported.
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        from ncl_jax.data import datasets  # lazy: after the log level above (TensorFlow)

        start = time.perf_counter()
        report = datasets.check_all_files(config.dataset, threads=flags.FLAGS.threads)
        seconds = time.perf_counter() - start
        for _, bad in report.values():
            for bad_file in bad:
                print(bad_file)
        total = sum(n for n, _ in report.values())
        num_bad = sum(len(bad) for _, bad in report.values())
        parts = ", ".join(
            f"{_SPLITS[name]} {n:,} ({len(bad):,} bad)" for name, (n, bad) in report.items()
        )
        print(f"checked {total:,} files in {seconds:.1f} s ({parts}): {num_bad:,} bad")
        return 1 if num_bad else 0

    sys.exit(run_cli(run))


def cli() -> None:
    """Console script `ncl-check-dataset`: the same as `python -m ncl_jax.check_dataset`."""
    run_app(main, define_flags=_define_flags, required=("config",))


if __name__ == "__main__":
    cli()
