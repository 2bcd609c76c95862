"""Top-5 classes of image files with one exported expert (`ncl_jax.export`), jax alone.

  python -m ncl_jax.predict --model=DIR IMAGE [IMAGE ...] [--top_k=5] [--batch_size=64]

The library: ncl_jax.deploy.predict.
"""

from __future__ import annotations

from absl import flags

from ncl_jax.cli import run_app, run_cli
from ncl_jax.deploy.predict import format_line, predict_files


def main(argv) -> None:
    f = flags.FLAGS

    def work() -> None:
        results = predict_files(f.model, argv[1:], top_k=f.top_k, batch_size=f.batch_size)
        for path, top in results:
            print(format_line(path, top))

    run_cli(work)


def _define_flags() -> None:
    flags.DEFINE_string("model", None, "Directory written by python -m ncl_jax.export.")
    flags.DEFINE_integer("top_k", 5, "Classes printed per image.")
    flags.DEFINE_integer("batch_size", 64, "Images per call of the exported function.")


def cli() -> None:
    """Console script `ncl-predict`: the same as `python -m ncl_jax.predict`."""

    run_app(main, define_flags=_define_flags, required=("model",), takes_arguments=True)


if __name__ == "__main__":
    cli()
