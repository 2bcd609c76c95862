"""Places-LT, ImageNet-pretrained ResNet-152, K=3 experts, cosine classifier (Table 2).

  python -m ncl_jax.main --config=configs/places_lt.py --workdir=runs/places \\
      --config.dataset.image_root=/data/places365 \\
      --config.dataset.train_list=/data/Places_LT_train.txt \\
      --config.dataset.eval_list=/data/Places_LT_val.txt \\
      --config.model.pretrained_path=/data/resnet152_torchvision.npz

Arguments: `paper` (default) | `official`.
Paper top-1, single / ensemble: 41.5 / 41.8.
Official yaml: 30 epochs, batch 8 x 32, lr 0.02, 5-epoch warm-up, x0.1 at epochs 10 and 20,
MoCo on in both variants (queue 65,536, dim 1,024, tau 0.2), HCM_N = 122, two `sim_sim` views.
The official code selects the best epoch on Places-LT *val* (20 images per class); report on
the test list with `python -m ncl_jax.evaluate` after pointing dataset.eval_list at it.
Pretrained weights are read from a local file only: convert torchvision's resnet152 with
`python -m ncl_jax.pretrained --torch_checkpoint=resnet152-b121ed2d.pth --out=FILE.npz`.
"""

from ncl_jax.config.recipes import apply_variant, large_image_config, parse_args


def get_config(arg: str | None = None):
    args = parse_args(arg)
    if args.get("flags"):
        raise ValueError(f"unknown config args {args['flags']}; use paper|official.")
    c = large_image_config(
        name="places_lt",
        num_classes=365,
        view="places_sim",
        normalization="imagenet",
        backbone="resnet152",
    )
    c.dataset.source = "split_list"
    c.batch_size = 256
    c.num_epochs = 30
    c.optim.learning_rate = 0.02
    c.optim.milestones = (10, 20)
    variant = args.get("variant", "paper")
    if variant == "official":
        c.loss.num_hard = 121  # official HCM_N = 122 of 365 (about C/3), label included
    apply_variant(c, variant, file_presets=True)
    c.moco.enabled = True
    c.log_every_steps = 20
    c.checkpoint_every_epochs = 5
    return c
