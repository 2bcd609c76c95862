"""ImageNet-pretrained torchvision ResNet/ResNeXt weights for the experts (Places-LT).

  python -m ncl_jax.pretrained --torch_checkpoint=resnet152-b121ed2d.pth --out=FILE.npz

The library: ncl_jax.models.pretrained.
"""

from __future__ import annotations

import numpy as np
from absl import flags
from flax import traverse_util

from ncl_jax.cli import run_app, run_cli
from ncl_jax.models.pretrained import convert_file, reference_model
from ncl_jax.models.resnet import STAGE_SIZES


def main(argv) -> None:
    del argv

    f = flags.FLAGS
    tree = run_cli(lambda: convert_file(f.torch_checkpoint, f.out, model=reference_model(f.arch)))
    count = sum(np.size(v) for v in traverse_util.flatten_dict(tree).values())
    print(f"wrote {f.out}: {f.arch} encoder, {count:,} values")


def _define_flags() -> None:
    flags.DEFINE_string(
        "torch_checkpoint", None, "torchvision state dict (.pth), or a .npz of torch-named arrays."
    )
    flags.DEFINE_string("out", None, "Output .npz for model.pretrained_path.")
    flags.DEFINE_enum("arch", "resnet152", list(STAGE_SIZES), "torchvision architecture.")


def cli() -> None:
    """Console script `ncl-convert-pretrained`: the same as `python -m ncl_jax.pretrained`."""

    run_app(main, define_flags=_define_flags, required=("torch_checkpoint", "out"))


if __name__ == "__main__":
    cli()
