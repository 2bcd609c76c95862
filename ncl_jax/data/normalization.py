"""Per-channel mean and std of each named input normalisation (pixels in [0, 1]).

No TensorFlow here: the augmentation views (`augment.py`) and the exported inference function
(`ncl_jax.export`) share these constants.
"""

NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "inat": ((0.466, 0.471, 0.380), (0.195, 0.194, 0.192)),
}
