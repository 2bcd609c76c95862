"""A tiny run for tests and for checking an installation in a minute on a CPU.

  python -m ncl_jax.main --config=configs/smoke.py --workdir=/tmp/ncl_smoke

Real CIFAR-10 (the offline `cifar10_jpeg` copy), IF 100, three ResNet-8 experts of width 4,
MoCo on, 2 epochs of 3 steps, evaluation on the first 256 test images. Not a benchmark. The
training view is pad-crop-flip: the recipes' RandAugment / AutoAugment are tested op by op,
and tracing them would add seconds to each of the many test runs of this config.
"""

from ncl_jax.config.base import get_base_config
from ncl_jax.config.recipes import apply_variant, parse_args


def get_config(arg: str | None = None):
    args = parse_args(arg)
    if args.get("flags"):
        raise ValueError(f"unknown config args {args['flags']}; use paper|official.")
    c = get_base_config()
    c.dataset.name = "cifar10_jpeg"
    c.dataset.num_classes = 10
    c.dataset.imbalance_factor = 100.0
    c.dataset.eval_max_examples = 256
    c.dataset.train_view = "cifar_standard"
    c.model.depth = 1
    c.model.width = 4
    c.moco.dim = 8
    c.moco.queue_size = 64
    c.batch_size = 16
    c.eval_batch_size = 128
    c.num_epochs = 2
    c.steps_per_epoch = 3
    c.optim.warmup_epochs = 1
    c.optim.milestones = (2,)
    c.log_every_steps = 1
    c.checkpoint_every_epochs = 1
    apply_variant(c, args.get("variant", "paper"))
    return c
