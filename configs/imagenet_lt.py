"""ImageNet-LT, ResNet-50 or ResNeXt-50 (32x4d), K=3 experts, cosine classifier (Table 2).

  python -m ncl_jax.main --config=configs/imagenet_lt.py:resnet50 --workdir=runs/inlt_r50 \\
      --config.dataset.image_root=/data/imagenet \\
      --config.dataset.train_list=/data/ImageNet_LT_train.txt \\
      --config.dataset.eval_list=/data/ImageNet_LT_test.txt

Arguments: `resnet50` (default) | `resnext50`; `paper` (default) | `official`.
Paper top-1, single / ensemble: ResNet-50 57.4 / 59.5, ResNeXt-50 58.4 / 60.5.
Paper: 400 epochs (PaCo's budget) with self-supervision. Official yaml: 200 epochs, lr 0.2,
per-epoch cosine to 1e-4, no warm-up, no MoCo, batch 4 x 64, HCM_N = 300.
The paper does not give the MoCo queue/dim for ImageNet-LT; we use the official Places values
(queue 65,536, dim 1,024, tau 0.2), an assumption.
"""

from ncl_jax.config.recipes import apply_variant, large_image_config, parse_args


def get_config(arg: str | None = None):
    args = parse_args(arg)
    flags = set(filter(None, args.get("flags", "").split(",")))
    if flags - {"resnet50", "resnext50"}:
        raise ValueError(
            f"unknown config args {sorted(flags)}; use resnet50|resnext50, paper|official."
        )
    c = large_image_config(
        name="imagenet_lt",
        num_classes=1000,
        view="imagenet_randaugment",
        normalization="imagenet",
        backbone="resnext50_32x4d" if "resnext50" in flags else "resnet50",
    )
    c.dataset.source = "split_list"
    c.batch_size = 256
    c.optim.learning_rate = 0.2
    c.optim.schedule = "cosine"
    variant = args.get("variant", "paper")
    apply_variant(c, variant, file_presets=True)
    c.num_epochs = 400 if variant == "paper" else 200
    c.moco.enabled = variant == "paper"
    return c
