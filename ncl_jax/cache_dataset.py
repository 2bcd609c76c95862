"""The configured long-tailed dataset written to one file that numpy alone reads back.

  python -m ncl_jax.cache_dataset --config=configs/cifar10_lt.py:if100 --out=PATH
      [--config.dataset.name=cifar10_jpeg] [--overwrite]

Run it where TFDS holds the dataset; train from the file anywhere, TensorFlow or not, with
`--config.dataset.source=cache --config.dataset.cache_path=PATH` (docs/data.md). The
library: ncl_jax.data.cache.
"""

from __future__ import annotations

from absl import flags
from ml_collections import config_flags

from ncl_jax.cli import run_app, run_cli
from ncl_jax.config.variants import resolve_config
from ncl_jax.data import cache, datasets


def main(argv) -> None:
    f = flags.FLAGS

    def work() -> None:
        config = resolve_config(f.config)
        resolved = datasets.resolve(config.dataset)
        size = cache.write_cache(f.out, resolved, config.dataset, overwrite=f.overwrite)
        info = resolved.info
        print(
            f"wrote {f.out}: {info.num_train} training and {info.num_eval} evaluation images "
            f"of {info.name}, {size / 1e6:.1f} MB"
        )

    run_cli(work)


def _define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. configs/cifar10_lt.py:if100 (as for ncl_jax.main)."
    )
    flags.DEFINE_string("out", None, "The file to write (e.g. data/cifar10_lt_if100.npz).")
    flags.DEFINE_bool("overwrite", False, "Replace an existing file at --out.")


def cli() -> None:
    """Console script `ncl-cache-dataset`: the same as `python -m ncl_jax.cache_dataset`."""

    run_app(main, define_flags=_define_flags, required=("config", "out"))


if __name__ == "__main__":
    cli()
