"""One expert of a trained run as a self-contained inference artefact (`jax.export`).

  python -m ncl_jax.export --workdir=RUN --out=DIR [--expert=best|K]
      [--checkpoint=best_single|best_ensemble|latest|STEP] [--platforms=cpu,cuda]

The library: ncl_jax.deploy.export.
"""

from __future__ import annotations

from absl import flags

from ncl_jax.cli import run_app, run_cli
from ncl_jax.deploy.export import DEFAULT_PLATFORMS, export_workdir, summary


def main(argv) -> None:
    f = flags.FLAGS

    def work() -> None:
        metadata = export_workdir(
            f.workdir, f.out, expert=f.expert, checkpoint=f.checkpoint, platforms=f.platforms
        )
        print(summary(metadata, f.out))

    run_cli(work)


def _define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Training workdir holding config.json and checkpoints.")
    flags.DEFINE_string("out", None, "New (or empty) directory for model.jaxexport and model.json.")
    flags.DEFINE_string("expert", "best", "Expert index K, or best (from the checkpoint's eval).")
    flags.DEFINE_string(
        "checkpoint",
        None,
        "best_single | best_ensemble | latest | STEP (default: best_single if present, "
        "else the newest periodic/final checkpoint).",
    )
    flags.DEFINE_list(
        "platforms", list(DEFAULT_PLATFORMS), "jax.export platforms the artefact runs on."
    )


def cli() -> None:
    """Console script `ncl-export`: the same as `python -m ncl_jax.export`."""

    run_app(main, define_flags=_define_flags, required=("workdir", "out"))


if __name__ == "__main__":
    cli()
