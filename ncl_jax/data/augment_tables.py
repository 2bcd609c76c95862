"""The augmentation policies' tables and constants, shared by the TF views (`augment.py`) and
the JAX views (`jax_augment.py`) so the two implementations cannot drift.

numpy only: the JAX path imports this without TensorFlow.
"""

from __future__ import annotations

import numpy as np

Fill = tuple[float, float, float]

GRAY_FILL: Fill = (128.0, 128.0, 128.0)
# timm's img_mean fill: round(255 * ImageNet mean), as in the official ImageNet-LT/iNat recipe.
IMAGENET_FILL: Fill = (124.0, 116.0, 104.0)

# ---------------------------------------------------------------------------------------------
# AutoAugment CIFAR10Policy (Cubuk et al. 2019, as in the official lib/dataset/autoaug.py).

AUTOAUGMENT_OPS = (
    "shearX", "shearY", "translateX", "translateY", "rotate", "color", "posterize", "solarize",
    "contrast", "sharpness", "brightness", "autocontrast", "equalize", "invert",
)  # fmt: skip

# Sub-policies: ((op, probability, magnitude bin 0..9), (op, probability, magnitude bin)).
CIFAR10_POLICY: tuple[tuple[tuple[str, float, int], tuple[str, float, int]], ...] = (
    (("invert", 0.1, 7), ("contrast", 0.2, 6)),
    (("rotate", 0.7, 2), ("translateX", 0.3, 9)),
    (("sharpness", 0.8, 1), ("sharpness", 0.9, 3)),
    (("shearY", 0.5, 8), ("translateY", 0.7, 9)),
    (("autocontrast", 0.5, 8), ("equalize", 0.9, 2)),
    (("shearY", 0.2, 7), ("posterize", 0.3, 7)),
    (("color", 0.4, 3), ("brightness", 0.6, 7)),
    (("sharpness", 0.3, 9), ("brightness", 0.7, 9)),
    (("equalize", 0.6, 5), ("equalize", 0.5, 1)),
    (("contrast", 0.6, 7), ("sharpness", 0.6, 5)),
    (("color", 0.7, 7), ("translateX", 0.5, 8)),
    (("equalize", 0.3, 7), ("autocontrast", 0.4, 8)),
    (("translateY", 0.4, 3), ("sharpness", 0.2, 6)),
    (("brightness", 0.9, 6), ("color", 0.2, 8)),
    (("solarize", 0.5, 2), ("invert", 0.0, 3)),
    (("equalize", 0.2, 0), ("autocontrast", 0.6, 0)),
    (("equalize", 0.2, 8), ("equalize", 0.6, 4)),
    (("color", 0.9, 9), ("equalize", 0.6, 6)),
    (("autocontrast", 0.8, 4), ("solarize", 0.2, 8)),
    (("brightness", 0.1, 3), ("color", 0.7, 0)),
    (("solarize", 0.4, 5), ("autocontrast", 0.9, 3)),
    (("translateY", 0.9, 9), ("translateY", 0.7, 9)),
    (("autocontrast", 0.9, 2), ("solarize", 0.8, 3)),
    (("equalize", 0.8, 8), ("invert", 0.1, 3)),
    (("translateY", 0.7, 9), ("autocontrast", 0.9, 1)),
)


def autoaugment_magnitude(op: str, magnitude_bin: int) -> float:
    """Value of bin 0..9 of the op's 10-bin AutoAugment range (translate: fraction of size)."""
    ends = {
        "shearX": (0.0, 0.3), "shearY": (0.0, 0.3), "rotate": (0.0, 30.0),
        "translateX": (0.0, 150 / 331), "translateY": (0.0, 150 / 331),
        "color": (0.0, 0.9), "contrast": (0.0, 0.9), "sharpness": (0.0, 0.9),
        "brightness": (0.0, 0.9), "solarize": (256.0, 0.0),
    }  # fmt: skip
    if op == "posterize":
        return float(np.round(np.linspace(8, 4, 10))[magnitude_bin])
    if op in ends:
        return float(np.linspace(*ends[op], 10)[magnitude_bin])
    return 0.0


def cifar10_policy_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR10_POLICY as arrays [25, 2]: op index into AUTOAUGMENT_OPS (int32), probability and
    magnitude value (float32), the form both samplers index by the drawn sub-policy."""
    op_ids = [[AUTOAUGMENT_OPS.index(op) for op, _, _ in sub] for sub in CIFAR10_POLICY]
    probs = [[p for _, p, _ in sub] for sub in CIFAR10_POLICY]
    mags = [[autoaugment_magnitude(op, m) for op, _, m in sub] for sub in CIFAR10_POLICY]
    return (
        np.asarray(op_ids, np.int32),
        np.asarray(probs, np.float32),
        np.asarray(mags, np.float32),
    )


# ---------------------------------------------------------------------------------------------
# RandAugment, timm `rand-n2-m10-mstd0.5` as shipped in the official lib/dataset/randaugment.py.

RAND_AUGMENT_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeTpu", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel",
)  # fmt: skip
RAND_AUGMENT_LAYERS = 2  # n2
RAND_AUGMENT_MAGNITUDE = 10.0  # m10, levels in [0, 10]
RAND_AUGMENT_MAGNITUDE_STD = 0.5  # mstd0.5
# timm's level-to-argument maps: argument = level / 10 * maximum (floored for the integer ones).
RAND_AUGMENT_MAX = {
    "rotate_degrees": 30.0,
    "posterize_bits": 4.0,  # PosterizeTpu keeps floor(frac * 4) bits
    "solarize_threshold": 256.0,
    "solarize_add": 110.0,
    "shear": 0.3,
    "translate_fraction": 0.45,
}
RAND_AUGMENT_ENHANCE = (0.1, 1.8)  # enhance factor = 0.1 + frac * 1.8, in [0.1, 1.9]

# ---------------------------------------------------------------------------------------------
# The views' constants (official cui_cifar.py and the MoCo-v2 `sim_cifar` key view).

CIFAR_PADDING = 4  # RandomCrop(32, padding=4)
CUTOUT_LENGTH = 16
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's aspect-ratio range
RESIZED_CROP_ATTEMPTS = 10  # torchvision's get_params tries 10 boxes before the centre crop
MOCO_CROP_SCALE = (0.2, 1.0)
MOCO_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
MOCO_JITTER_P = 0.8
MOCO_GRAY_P = 0.2
MOCO_BLUR_P = 0.5
BLUR_SIGMA = (0.1, 2.0)  # GaussianBlur sigma ~ U[0.1, 2.0]


def jitter_factor(strength: float, u):
    """torchvision ColorJitter's factor for a strength x: uniform on [max(0, 1 - x), 1 + x],
    from a uniform draw u in [0, 1) (a TF tensor or a JAX array: plain arithmetic, so both
    MoCo views, TF and JAX, use this one formula)."""
    low = max(0.0, 1.0 - strength)
    return low + (1.0 + strength - low) * u
