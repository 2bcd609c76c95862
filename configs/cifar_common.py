"""The CIFAR-LT recipe shared by cifar10_lt.py and cifar100_lt.py."""

import difflib

from configs.base import apply_variant, get_base_config, parse_args
from configs.experiments import ARG_FLAGS, apply_experiment


def cifar_config(arg: str | None, *, name: str, num_classes: int):
    args = parse_args(arg, keys=("ablation",), imbalance=True)
    flags = set(filter(None, args.get("flags", "").split(",")))
    unknown = flags - {"contrastive", "quick", *ARG_FLAGS}
    if unknown:
        known = ["paper", "official", "contrastive", "quick", *ARG_FLAGS]
        close = [m for u in sorted(unknown) for m in difflib.get_close_matches(u, known, n=1)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown config args {sorted(unknown)}{hint}; use ifN, paper|official, "
            "contrastive, quick, ablation=NAME, ce, noaug (configs/experiments.py)."
        )
    c = get_base_config()
    c.dataset.name = name
    c.dataset.num_classes = num_classes
    c.dataset.imbalance_factor = float(args.get("if", 100))
    variant = args.get("variant", "paper")
    apply_variant(c, variant, file_presets=True)
    # Paper: RandAugment (Sec. 4.2); official: AutoAugment CIFAR10Policy + Cutout.
    c.dataset.train_view = "cifar_randaugment" if variant == "paper" else "cifar_autoaugment"
    # Official CIFAR NCL.yaml trains without self-supervision; "contrastive" picks the
    # *_NCL_with_contrastive.yaml recipe (MoCo K=1024, dim 64, T=0.2, m=0.999).
    c.moco.enabled = variant == "paper" or "contrastive" in flags
    apply_experiment(c, ablation=args.get("ablation"), flags=flags)
    if "quick" in flags:
        quick(c)
    return c


def quick(c):
    """A first run on a CPU in minutes: ResNet-8 experts, 4 epochs; far from paper accuracy."""
    c.model.depth = 1
    c.batch_size = 64
    c.num_epochs = 4
    c.optim.warmup_epochs = 1
    c.optim.milestones = (3,)
    c.moco.queue_size = 1024
    c.eval_batch_size = 1000
    c.log_every_steps = 10
    c.checkpoint_every_epochs = 1
