"""iNaturalist 2018, ResNet-50, K=3 experts, cosine classifier with scale 32 (Table 3).

  python -m ncl_jax.main --config=configs/inat2018.py --workdir=runs/inat \\
      --config.dataset.data_dir=/data/tensorflow_datasets

Arguments: `paper` (default) | `official`.
Paper top-1, single / ensemble: 74.2 / 74.9 (many 72.0/72.7, medium 74.9/75.6, few 73.8/74.5).
Official yaml: 400 epochs, lr 0.2, cosine to 1e-4, batch 8 x 64, HCM_N = 2442, no MoCo.
Data: TFDS `i_naturalist2018` (train as is: it is naturally long-tailed; eval on validation).
MoCo queue/dim for the paper variant follow the official Places values (an assumption).
"""

from configs.base import apply_variant, get_base_config, parse_args


def get_config(arg: str | None = None):
    args = parse_args(arg)
    if args.get("flags"):
        raise ValueError(f"unknown config args {args['flags']}; use paper|official.")
    c = get_base_config()
    d = c.dataset
    d.name = "i_naturalist2018"
    d.num_classes = 8142
    d.imbalance_factor = 0.0
    d.eval_split = "validation"
    d.image_size = 224
    d.train_view = "imagenet_randaugment"
    d.key_view = "imagenet_randaugment"
    d.eval_view = "resize_center_crop"
    d.normalization = "inat"
    d.cache = False
    c.model.backbone = "resnet50"
    c.model.classifier = "cosine"
    c.model.cos_scale = 32.0
    c.batch_size = 512
    c.eval_batch_size = 512
    c.num_epochs = 400
    c.optim.learning_rate = 0.2
    c.optim.schedule = "cosine"
    c.moco.queue_size = 65536
    c.moco.dim = 1024
    variant = args.get("variant", "paper")
    apply_variant(c, variant)
    c.moco.enabled = variant == "paper"
    c.log_every_steps = 100
    return c
