"""Defaults shared by the 224-pixel datasets (ImageNet-LT, iNaturalist 2018, Places-LT)."""

from configs.base import get_base_config


def large_image_config(
    *, name: str, num_classes: int, view: str, normalization: str, backbone: str
):
    """Cosine classifier, streamed data, 224-px views, the official MoCo size (queue 65,536 of
    1,024-d keys, used by the official Places config; the paper gives none for the others)."""
    c = get_base_config()
    d = c.dataset
    d.name = name
    d.num_classes = num_classes
    d.imbalance_factor = 0.0  # these datasets are long-tailed as published
    d.image_size = 224
    d.train_view = view
    d.key_view = view
    d.eval_view = "resize_center_crop"
    d.normalization = normalization
    d.cache = False
    c.model.backbone = backbone
    c.model.classifier = "cosine"
    c.model.cos_scale = 16.0
    c.eval_batch_size = 512
    c.moco.queue_size = 65536
    c.moco.dim = 1024
    c.log_every_steps = 100
    return c
