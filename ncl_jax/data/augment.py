"""Training and evaluation views of NCL (paper Sec. 4.2, official code `lib/dataset/`).

`make_view(name, image_size=, normalization=)` returns `fn(image, seed)`: uint8 [H, W, 3] image
and a stateless seed int[2] -> normalised float32 [image_size, image_size, 3]. Every random draw
comes from TF's stateless RNG keyed by `seed`, so the output is a pure function of its inputs:
tf.data may run it in parallel, and a resumed run replays exactly the same augmentations.

Ops run in 8-bit pixel space (see `augment_ops.py`); each view normalises once at the end.
Where the TF version departs from the PyTorch pipelines (resampling only): AutoAugment's shear
and RandAugment's rotate/shear/translate sample bilinearly (PIL bicubic, and timm's random
bilinear/bicubic, have no TF transform op); the Gaussian blur is an exact Gaussian, not PIL's
box-blur approximation; the hue shift is continuous, not on PIL's 8-bit HSV grid.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from ncl_jax.data import augment_ops as ops
from ncl_jax.data import augment_tables as tables
from ncl_jax.data.choices import VIEWS
from ncl_jax.data.normalization import NORMALIZATION

# The policy tables and view constants live in augment_tables.py (shared with jax_augment.py);
# re-exported here under the names this module has always offered.
AUTOAUGMENT_OPS = tables.AUTOAUGMENT_OPS
CIFAR10_POLICY = tables.CIFAR10_POLICY
RAND_AUGMENT_OPS = tables.RAND_AUGMENT_OPS
autoaugment_magnitude = tables.autoaugment_magnitude
_GRAY_FILL = tables.GRAY_FILL
_IMAGENET_FILL = tables.IMAGENET_FILL

# ---------------------------------------------------------------------------------------------
# AutoAugment CIFAR10Policy (Cubuk et al. 2019, as in the official lib/dataset/autoaug.py).


def autoaugment_op(
    image: tf.Tensor, index: tf.Tensor | int, magnitude: tf.Tensor | float, sign: tf.Tensor | float
) -> tf.Tensor:
    """Apply AUTOAUGMENT_OPS[index] (index == len(AUTOAUGMENT_OPS): identity) as the official
    autoaug.py does: fill 128; `sign` (+1/-1) negates shear, translate and enhance magnitudes.

    Rotate is unsigned there (always counter-clockwise); translate/rotate sample NEAREST (PIL's
    default), shear bilinear (PIL bicubic in the original).
    """
    fill = _GRAY_FILL
    magnitude = tf.cast(magnitude, tf.float32)
    signed = magnitude * tf.cast(sign, tf.float32)
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    branches = [
        lambda: ops.shear_x(image, signed, fill=fill),
        lambda: ops.shear_y(image, signed, fill=fill),
        lambda: ops.translate_x(image, signed * size[1], fill=fill, interpolation="NEAREST"),
        lambda: ops.translate_y(image, signed * size[0], fill=fill, interpolation="NEAREST"),
        lambda: ops.rotate(image, magnitude, fill=fill, interpolation="NEAREST"),
        lambda: ops.adjust_color(image, 1.0 + signed),
        lambda: ops.posterize(image, tf.cast(magnitude, tf.int32)),
        lambda: ops.solarize(image, magnitude),
        lambda: ops.adjust_contrast(image, 1.0 + signed),
        lambda: ops.adjust_sharpness(image, 1.0 + signed),
        lambda: ops.adjust_brightness(image, 1.0 + signed),
        lambda: ops.autocontrast(image),
        lambda: ops.equalize(image),
        lambda: ops.invert(image),
        lambda: image,
    ]
    return tf.ensure_shape(tf.switch_case(tf.cast(index, tf.int32), branches), image.shape)


def cifar10_autoaugment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """One uniformly drawn CIFAR10Policy sub-policy; each of its two ops fires with its own p."""
    op_ids, probs, magnitudes = (tf.constant(a) for a in tables.cifar10_policy_arrays())
    u = tf.random.stateless_uniform([5], seed)
    policy = tf.minimum(tf.cast(u[0] * len(CIFAR10_POLICY), tf.int32), len(CIFAR10_POLICY) - 1)
    for k in range(2):
        fire = u[1 + 2 * k] < probs[policy, k]
        index = tf.where(fire, op_ids[policy, k], len(AUTOAUGMENT_OPS))
        sign = tf.where(u[2 + 2 * k] < 0.5, -1.0, 1.0)
        image = autoaugment_op(image, index, magnitudes[policy, k], sign)
    return image


# ---------------------------------------------------------------------------------------------
# RandAugment, timm `rand-n2-m10-mstd0.5` as shipped in the official lib/dataset/randaugment.py.


def rand_augment_op(
    image: tf.Tensor,
    index: tf.Tensor | int,
    level: tf.Tensor | float,
    sign: tf.Tensor | float,
    *,
    fill: ops.Fill,
) -> tf.Tensor:
    """Apply RAND_AUGMENT_OPS[index] (index == len(RAND_AUGMENT_OPS): identity) at `level` in
    [0, 10] with timm's level-to-argument maps; `sign` negates rotate/shear/translate only."""
    frac = tf.cast(level, tf.float32) / 10.0
    sign = tf.cast(sign, tf.float32)
    top = tables.RAND_AUGMENT_MAX
    low, span = tables.RAND_AUGMENT_ENHANCE
    enhance = low + frac * span  # timm: enhance factors in [0.1, 1.9], never negated
    shift = frac * top["translate_fraction"] * sign  # fraction of the image size
    size = tf.cast(tf.shape(image)[:2], tf.float32)
    branches = [
        lambda: ops.autocontrast(image),
        lambda: ops.equalize(image),
        lambda: ops.invert(image),
        lambda: ops.rotate(image, frac * top["rotate_degrees"] * sign, fill=fill),
        lambda: ops.posterize(image, tf.cast(tf.floor(frac * top["posterize_bits"]), tf.int32)),
        lambda: ops.solarize(image, tf.floor(frac * top["solarize_threshold"])),
        lambda: ops.solarize_add(image, tf.floor(frac * top["solarize_add"])),
        lambda: ops.adjust_color(image, enhance),
        lambda: ops.adjust_contrast(image, enhance),
        lambda: ops.adjust_brightness(image, enhance),
        lambda: ops.adjust_sharpness(image, enhance),
        lambda: ops.shear_x(image, frac * top["shear"] * sign, fill=fill),
        lambda: ops.shear_y(image, frac * top["shear"] * sign, fill=fill),
        lambda: ops.translate_x(image, shift * size[1], fill=fill),
        lambda: ops.translate_y(image, shift * size[0], fill=fill),
        lambda: image,
    ]
    return tf.ensure_shape(tf.switch_case(tf.cast(index, tf.int32), branches), image.shape)


def rand_augment(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    fill: ops.Fill,
    num_layers: int = tables.RAND_AUGMENT_LAYERS,
    magnitude: float = tables.RAND_AUGMENT_MAGNITUDE,
    magnitude_std: float = tables.RAND_AUGMENT_MAGNITUDE_STD,
) -> tf.Tensor:
    """`num_layers` ops drawn with replacement, each applied with p=0.5 at a magnitude drawn
    from N(magnitude, magnitude_std) clipped to [0, 10]; geometric ops get a random sign."""
    u = tf.random.stateless_uniform([num_layers, 3], seed)
    noise_seed = tf.random.experimental.stateless_fold_in(seed, 1)
    noise = tf.random.stateless_normal([num_layers], noise_seed)
    num_ops = len(RAND_AUGMENT_OPS)
    for k in range(num_layers):
        choice = tf.minimum(tf.cast(u[k, 0] * num_ops, tf.int32), num_ops - 1)
        index = tf.where(u[k, 1] < 0.5, choice, num_ops)
        level = tf.clip_by_value(magnitude + magnitude_std * noise[k], 0.0, 10.0)
        sign = tf.where(u[k, 2] < 0.5, -1.0, 1.0)
        image = rand_augment_op(image, index, level, sign, fill=fill)
    return image


# ---------------------------------------------------------------------------------------------
# Photometric and cropping steps shared by the views (torchvision semantics).


def color_jitter(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> tf.Tensor:
    """torchvision ColorJitter: factors ~ U[max(0, 1-x), 1+x], hue ~ U[-hue, hue], the four
    adjustments in a random order; a zero strength skips its adjustment."""
    u = tf.random.stateless_uniform([8], seed)
    order = tf.argsort(u[4:])

    factor = tables.jitter_factor

    steps = [
        (brightness, lambda img: ops.adjust_brightness(img, factor(brightness, u[0]))),
        (contrast, lambda img: ops.adjust_contrast(img, factor(contrast, u[1]))),
        (saturation, lambda img: ops.adjust_color(img, factor(saturation, u[2]))),
        (hue, lambda img: ops.adjust_hue(img, hue * (2.0 * u[3] - 1.0))),
    ]
    for position in range(4):
        img = image
        branches = [(lambda f=fn, i=img: f(i)) if x > 0 else (lambda i=img: i) for x, fn in steps]
        image = tf.ensure_shape(tf.switch_case(order[position], branches), image.shape)
    return image


def _maybe(u: tf.Tensor, p: float, fn: Callable[[], tf.Tensor], image: tf.Tensor) -> tf.Tensor:
    """Apply `fn` when the draw u < p (torchvision RandomApply)."""
    return tf.cond(u < p, fn, lambda: image)


def _random_resized_crop(image, seed, size: int, scale: tuple[float, float]) -> tf.Tensor:
    shape = tf.shape(image)
    uniforms = tf.random.stateless_uniform([10, 4], seed)
    box = ops.random_resized_crop_box(
        shape[0], shape[1], uniforms, scale=scale, ratio=tables.CROP_RATIO
    )
    return ops.crop_and_resize(image, box, size)


def _pad_crop(image: tf.Tensor, seed: tf.Tensor, size: int, padding: int) -> tf.Tensor:
    """torchvision RandomCrop(size, padding): zero padding, then a uniformly placed window."""
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
    return tf.image.stateless_random_crop(padded, [size, size, 3], seed)


def _flip(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    return tf.image.stateless_random_flip_left_right(image, seed)


def _blur_sigma(u: tf.Tensor) -> tf.Tensor:
    """GaussianBlur's sigma ~ U[BLUR_SIGMA] from a U[0, 1) draw."""
    low, high = tables.BLUR_SIGMA
    return low + (high - low) * u


def _gray3(image: tf.Tensor) -> tf.Tensor:
    return tf.tile(ops.grayscale(image), [1, 1, 3])


# ---------------------------------------------------------------------------------------------
# Views.


def _cifar_policy_view(
    image, seed, size: int, policy: str | None, *, cutout: bool = True
) -> tf.Tensor:
    """Official CIFAR view (cui_cifar.py): pad-4 crop, flip, policy, Cutout 16 (hole = black).
    `policy` None or `cutout` False leave that step out (the ablation views); the other steps
    keep their seeds, so each draws what it draws in the full view."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = _flip(_pad_crop(image, seeds[0], size, padding=tables.CIFAR_PADDING), seeds[1])
    if policy == "autoaugment":
        image = cifar10_autoaugment(image, seeds[2])
    elif policy == "randaugment":
        image = rand_augment(image, seeds[2], fill=_GRAY_FILL)
    if not cutout:
        return image
    center = tf.random.stateless_uniform([2], seeds[3], maxval=size, dtype=tf.int32)
    return ops.cutout(image, center[0], center[1], length=tables.CUTOUT_LENGTH)


def _cifar_standard_view(image, seed, size: int) -> tf.Tensor:
    """The standard CIFAR augmentation, pad-4 crop and flip only: the paper's "w/o RandAug"
    setting of Table 4 (no policy, no Cutout)."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    return _flip(_pad_crop(image, seeds[0], size, padding=tables.CIFAR_PADDING), seeds[1])


def _moco_view(image, seed, size: int) -> tf.Tensor:
    """MoCo-v2 key view `sim_cifar`: crop (0.2-1), flip, p=.8 jitter, p=.2 gray, p=.5 blur."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    u = tf.random.stateless_uniform([4], seeds[0])
    image = _flip(_random_resized_crop(image, seeds[1], size, tables.MOCO_CROP_SCALE), seeds[2])
    jitter = lambda: color_jitter(image, seeds[3], **tables.MOCO_JITTER)
    image = _maybe(u[0], tables.MOCO_JITTER_P, jitter, image)
    image = _maybe(u[1], tables.MOCO_GRAY_P, lambda: _gray3(image), image)
    sigma = _blur_sigma(u[3])
    return _maybe(u[2], tables.MOCO_BLUR_P, lambda: ops.gaussian_blur(image, sigma), image)


def _places_view(image, seed, size: int) -> tf.Tensor:
    """Places-LT `sim` view (others.py): crop (0.08-1), jitter, p=.2 gray, p=.5 blur, flip."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    u = tf.random.stateless_uniform([3], seeds[0])
    image = _random_resized_crop(image, seeds[1], size, (0.08, 1.0))
    jitter = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0)
    image = color_jitter(image, seeds[2], **jitter)
    image = _maybe(u[0], 0.2, lambda: _gray3(image), image)
    sigma = _blur_sigma(u[2])
    image = _maybe(u[1], 0.5, lambda: ops.gaussian_blur(image, sigma), image)
    return _flip(image, seeds[3])


def _imagenet_randaugment_view(image, seed, size: int) -> tf.Tensor:
    """ImageNet-LT / iNat `randcls` view (others.py): crop (0.08-1), flip, jitter, RandAugment."""
    seeds = tf.random.experimental.stateless_split(seed, 4)
    image = _flip(_random_resized_crop(image, seeds[0], size, (0.08, 1.0)), seeds[1])
    jitter = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.0)
    image = color_jitter(image, seeds[2], **jitter)
    return rand_augment(image, seeds[3], fill=_IMAGENET_FILL)


def _identity_view(image, seed, size: int) -> tf.Tensor:
    """CIFAR test view: the image as is (it must already be size x size)."""
    del seed
    return tf.ensure_shape(image, [size, size, 3])


def _resize_center_crop_view(image, seed, size: int) -> tf.Tensor:
    """Evaluation view for the large datasets: Resize(size * 256 / 224), CenterCrop(size)."""
    del seed
    return ops.resize_shorter_center_crop(image, round(size * 256 / 224), size)


_VIEW_FNS: dict[str, Callable[[tf.Tensor, tf.Tensor, int], tf.Tensor]] = {
    "cifar_autoaugment": lambda im, s, n: _cifar_policy_view(im, s, n, "autoaugment"),
    "cifar_randaugment": lambda im, s, n: _cifar_policy_view(im, s, n, "randaugment"),
    "cifar_standard": _cifar_standard_view,
    "cifar_randaugment_no_cutout": lambda im, s, n: _cifar_policy_view(
        im, s, n, "randaugment", cutout=False
    ),
    "cifar_cutout": lambda im, s, n: _cifar_policy_view(im, s, n, None),
    "moco_cifar": _moco_view,
    "imagenet_randaugment": _imagenet_randaugment_view,
    "places_sim": _places_view,
    "cifar_test": _identity_view,
    "resize_center_crop": _resize_center_crop_view,
}
# Views whose input must already be size x size (the CIFAR test view resizes nothing).
_EXACT_INPUT_VIEWS = ("cifar_test",)
# Views that pad by 4 and crop size x size: a side shorter than size - 8 leaves no window.
_PAD_CROP_VIEWS = (
    "cifar_autoaugment",
    "cifar_randaugment",
    "cifar_standard",
    "cifar_randaugment_no_cutout",
    "cifar_cutout",
)


def input_size_problem(name: str, size: int, height: int, width: int) -> str | None:
    """Why view `name` (at `image_size` = size) cannot take a height x width image, in words
    that follow a file name ("is 4000x3000 pixels but ..."); None when it can.

    The CIFAR test view takes exactly size x size (as the official code, which never resizes
    CIFAR); the pad-and-crop views need each side >= size - 8; every other view resizes."""
    if name in _EXACT_INPUT_VIEWS and (height, width) != (size, size):
        return f"is {width}x{height} pixels but view {name!r} takes exactly {size}x{size}"
    if name in _PAD_CROP_VIEWS and min(height, width) + 2 * tables.CIFAR_PADDING < size:
        smallest = size - 2 * tables.CIFAR_PADDING
        return (
            f"is {width}x{height} pixels but view {name!r} needs both sides >= {smallest} to "
            f"crop {size}x{size}"
        )
    return None


def make_view(
    name: str, *, image_size: int, normalization: str
) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """Return fn(image uint8 [H, W, 3], seed int[2]) -> float32 [image_size, image_size, 3].

    The result is (pixel / 255 - mean) / std for the named normalisation, deterministic in
    (image, seed) and usable inside tf.data.Dataset.map (graph mode, no Python callbacks).
    """
    if name not in _VIEW_FNS:
        raise ValueError(f"unknown augmentation view {name!r}; choose one of {', '.join(VIEWS)}")
    if normalization not in NORMALIZATION:
        raise ValueError(
            f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATION)}"
        )
    view_fn = _VIEW_FNS[name]
    mean, std = (np.asarray(v, np.float64) for v in NORMALIZATION[normalization])
    # One multiply-add with constants folded here, so graph and eager runs agree bit for bit.
    scale = tf.constant(1.0 / (255.0 * std), tf.float32)
    offset = tf.constant(-mean / std, tf.float32)

    def view(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        image = tf.cast(tf.convert_to_tensor(image), tf.float32)
        image.set_shape([None, None, 3])
        seed = tf.cast(seed, tf.int64)
        out = view_fn(image, seed, image_size)
        out = out * scale + offset
        return tf.ensure_shape(out, [image_size, image_size, 3])

    return view
