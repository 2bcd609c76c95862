"""iNaturalist 2018, ResNet-50, K=3 experts, cosine classifier with scale 32 (Table 3).

  python -m ncl_jax.main --config=configs/inat2018.py --workdir=runs/inat \\
      --config.dataset.data_dir=/data/tensorflow_datasets

Arguments: `paper` (default) | `official`.
Paper top-1, single / ensemble: 74.2 / 74.9 (many 72.0/72.7, medium 74.9/75.6, few 73.8/74.5).
Official yaml: 400 epochs, lr 0.2, cosine to 1e-4, batch 8 x 64, HCM_N = 2442, no MoCo.
Data: TFDS `i_naturalist2018` (train as is: it is naturally long-tailed; eval on validation).
MoCo queue/dim for the paper variant follow the official Places values (an assumption).
"""

from ncl_jax.config.recipes import apply_variant, large_image_config, parse_args


def get_config(arg: str | None = None):
    args = parse_args(arg)
    if args.get("flags"):
        raise ValueError(f"unknown config args {args['flags']}; use paper|official.")
    c = large_image_config(
        name="i_naturalist2018",
        num_classes=8142,
        view="imagenet_randaugment",
        normalization="inat",
        backbone="resnet50",
    )
    c.dataset.eval_split = "validation"
    c.model.cos_scale = 32.0
    c.batch_size = 512
    c.num_epochs = 400
    c.optim.learning_rate = 0.2
    c.optim.schedule = "cosine"
    variant = args.get("variant", "paper")
    apply_variant(c, variant, file_presets=True)
    c.moco.enabled = variant == "paper"
    return c
