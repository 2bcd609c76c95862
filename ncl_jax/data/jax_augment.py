"""The CIFAR training views of `augment.py` in JAX, for the device-resident pipeline.

`apply_view(name, images, keys)` maps uint8 [N, H, W, 3] images and one PRNG key per image to
float32 [N, H, W, 3], normalised exactly as `augment.make_view` normalises: for the same pixels,
the same output bit for bit. It is jittable (name static) and batched over N inside
(vmap, or lax.map on a CPU: `resolve_batching`).

Each view draws the same random quantities from the same distributions as its TF version
(the draw structure is mirrored line for line), but from JAX's PRNG keyed per example, so a
given key does not reproduce the pixels of a given TF seed: the two pipelines agree in
distribution, op by op in value (tests/test_jax_augment.py, docs/data.md).
The sub-policy tables and magnitudes come from `augment_tables.py`, shared with the TF views.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ncl_jax.data import augment_tables as tables
from ncl_jax.data import jax_augment_ops as ops
from ncl_jax.data.normalization import NORMALIZATION

# ---------------------------------------------------------------------------------------------
# AutoAugment CIFAR10Policy (hand-written: no JAX library ships the policy).


def autoaugment_branches(
    shape: tuple[int, ...], magnitude: jax.Array | float, sign
) -> list[Callable[[jax.Array], jax.Array]]:
    """The ops of AUTOAUGMENT_OPS (then the identity) at `magnitude`, as the official autoaug.py
    applies them (and `augment.autoaugment_op`): fill 128, `sign` (+1/-1) negates shear,
    translate and enhance magnitudes; rotate unsigned; translate/rotate NEAREST, shear
    bilinear. `shape` is the image's [H, W, 3]."""
    fill = tables.GRAY_FILL
    magnitude = jnp.asarray(magnitude, jnp.float32)
    signed = magnitude * jnp.asarray(sign, jnp.float32)
    height, width = shape[0], shape[1]
    return [
        lambda x: ops.shear_x(x, signed, fill=fill),
        lambda x: ops.shear_y(x, signed, fill=fill),
        lambda x: ops.translate_x(x, signed * width, fill=fill, interpolation="NEAREST"),
        lambda x: ops.translate_y(x, signed * height, fill=fill, interpolation="NEAREST"),
        lambda x: ops.rotate(x, magnitude, fill=fill, interpolation="NEAREST"),
        lambda x: ops.adjust_color(x, 1.0 + signed),
        lambda x: ops.posterize(x, magnitude.astype(jnp.int32)),
        lambda x: ops.solarize(x, magnitude),
        lambda x: ops.adjust_contrast(x, 1.0 + signed),
        lambda x: ops.adjust_sharpness(x, 1.0 + signed),
        lambda x: ops.adjust_brightness(x, 1.0 + signed),
        ops.autocontrast,
        ops.equalize,
        ops.invert,
        lambda x: x,
    ]


def autoaugment_op(
    image: jax.Array, index: jax.Array | int, magnitude: jax.Array | float, sign
) -> jax.Array:
    """Apply AUTOAUGMENT_OPS[index] (index == len(AUTOAUGMENT_OPS): identity)."""
    branches = autoaugment_branches(image.shape, magnitude, sign)
    return jax.lax.switch(jnp.asarray(index, jnp.int32), branches, image)


def autoaugment_draws(key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The CIFAR10Policy's random choices: a uniformly drawn sub-policy whose two ops each fire
    with their own probability, each with a random sign. Returns the sub-policy (int32), its
    op indices (int32 [2], len(AUTOAUGMENT_OPS) where an op does not fire), magnitudes
    (float32 [2]) and signs (float32 [2]); the same draws as `augment.cifar10_autoaugment`."""
    op_ids, probs, magnitudes = (jnp.asarray(a) for a in tables.cifar10_policy_arrays())
    num_policies, num_ops = len(tables.CIFAR10_POLICY), len(tables.AUTOAUGMENT_OPS)
    u = jax.random.uniform(key, (5,))
    policy = jnp.minimum((u[0] * num_policies).astype(jnp.int32), num_policies - 1)
    fire = u[jnp.array([1, 3])] < probs[policy]
    index = jnp.where(fire, op_ids[policy], num_ops)
    sign = jnp.where(u[jnp.array([2, 4])] < 0.5, -1.0, 1.0)
    return policy, index, magnitudes[policy], sign


def cifar10_autoaugment(image: jax.Array, key: jax.Array) -> jax.Array:
    """One uniformly drawn CIFAR10Policy sub-policy; each of its two ops fires with its own p."""
    _, index, magnitude, sign = autoaugment_draws(key)
    for k in range(2):
        image = autoaugment_op(image, index[k], magnitude[k], sign[k])
    return image


# ---------------------------------------------------------------------------------------------
# RandAugment, timm `rand-n2-m10-mstd0.5` (hand-written: no JAX library ships timm's policy).


def rand_augment_branches(
    shape: tuple[int, ...], level: jax.Array | float, sign, *, fill: tables.Fill
) -> list[Callable[[jax.Array], jax.Array]]:
    """The ops of RAND_AUGMENT_OPS (then the identity) at `level` in [0, 10] with timm's
    level-to-argument maps (`augment_tables.RAND_AUGMENT_MAX`); `sign` negates
    rotate/shear/translate only; as `augment.rand_augment_op`. `shape` is [H, W, 3]."""
    frac = jnp.asarray(level, jnp.float32) / 10.0
    sign = jnp.asarray(sign, jnp.float32)
    top = tables.RAND_AUGMENT_MAX
    low, span = tables.RAND_AUGMENT_ENHANCE
    enhance = low + frac * span
    shift = frac * top["translate_fraction"] * sign
    height, width = shape[0], shape[1]
    return [
        ops.autocontrast,
        ops.equalize,
        ops.invert,
        lambda x: ops.rotate(x, frac * top["rotate_degrees"] * sign, fill=fill),
        lambda x: ops.posterize(x, jnp.floor(frac * top["posterize_bits"]).astype(jnp.int32)),
        lambda x: ops.solarize(x, jnp.floor(frac * top["solarize_threshold"])),
        lambda x: ops.solarize_add(x, jnp.floor(frac * top["solarize_add"])),
        lambda x: ops.adjust_color(x, enhance),
        lambda x: ops.adjust_contrast(x, enhance),
        lambda x: ops.adjust_brightness(x, enhance),
        lambda x: ops.adjust_sharpness(x, enhance),
        lambda x: ops.shear_x(x, frac * top["shear"] * sign, fill=fill),
        lambda x: ops.shear_y(x, frac * top["shear"] * sign, fill=fill),
        lambda x: ops.translate_x(x, shift * width, fill=fill),
        lambda x: ops.translate_y(x, shift * height, fill=fill),
        lambda x: x,
    ]


def rand_augment_op(
    image: jax.Array, index: jax.Array | int, level: jax.Array | float, sign, *, fill
) -> jax.Array:
    """Apply RAND_AUGMENT_OPS[index] (index == len(RAND_AUGMENT_OPS): identity) at `level`."""
    branches = rand_augment_branches(image.shape, level, sign, fill=fill)
    return jax.lax.switch(jnp.asarray(index, jnp.int32), branches, image)


def rand_augment_draws(
    key: jax.Array,
    *,
    num_layers: int = tables.RAND_AUGMENT_LAYERS,
    magnitude: float = tables.RAND_AUGMENT_MAGNITUDE,
    magnitude_std: float = tables.RAND_AUGMENT_MAGNITUDE_STD,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """RandAugment's random choices, as `augment.rand_augment` draws them: `num_layers` ops
    drawn with replacement, each kept with p=0.5 (int32 [num_layers] indices,
    len(RAND_AUGMENT_OPS) for a skipped layer), levels ~ N(magnitude, magnitude_std) clipped to
    [0, 10] (float32 [num_layers]) and signs +-1 (float32 [num_layers])."""
    uniform_key, noise_key = jax.random.split(key)
    u = jax.random.uniform(uniform_key, (num_layers, 3))
    noise = jax.random.normal(noise_key, (num_layers,))
    num_ops = len(tables.RAND_AUGMENT_OPS)
    choice = jnp.minimum((u[:, 0] * num_ops).astype(jnp.int32), num_ops - 1)
    index = jnp.where(u[:, 1] < 0.5, choice, num_ops)
    level = jnp.clip(magnitude + magnitude_std * noise, 0.0, 10.0)
    sign = jnp.where(u[:, 2] < 0.5, -1.0, 1.0)
    return index, level, sign


def rand_augment(image: jax.Array, key: jax.Array, *, fill: tables.Fill, **draw) -> jax.Array:
    """RandAugment with the choices of `rand_augment_draws(key, **draw)` applied in turn."""
    index, level, sign = rand_augment_draws(key, **draw)
    for k in range(index.shape[0]):
        image = rand_augment_op(image, index[k], level[k], sign[k], fill=fill)
    return image


# ---------------------------------------------------------------------------------------------
# ColorJitter (torchvision semantics, hand-written: dm-pix's random_* ops use other formulas
# and a fixed order).


def color_jitter(
    image: jax.Array,
    key: jax.Array,
    *,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
) -> jax.Array:
    """torchvision ColorJitter: factors ~ U[max(0, 1-x), 1+x], hue ~ U[-hue, hue], the four
    adjustments in a random order; a zero strength skips its adjustment."""
    u = jax.random.uniform(key, (8,))
    order = jnp.argsort(u[4:])

    factor = tables.jitter_factor

    steps = [
        (brightness, lambda img: ops.adjust_brightness(img, factor(brightness, u[0]))),
        (contrast, lambda img: ops.adjust_contrast(img, factor(contrast, u[1]))),
        (saturation, lambda img: ops.adjust_color(img, factor(saturation, u[2]))),
        (hue, lambda img: ops.adjust_hue(img, hue * (2.0 * u[3] - 1.0))),
    ]
    branches = [fn if x > 0 else (lambda img: img) for x, fn in steps]
    for position in range(4):
        image = jax.lax.switch(order[position], branches, image)
    return image


# ---------------------------------------------------------------------------------------------
# Views (the CIFAR views of augment.VIEWS).


def _cifar_policy_view(
    image: jax.Array, key: jax.Array, policy: str | None, *, cutout: bool = True
) -> jax.Array:
    """Official CIFAR view (cui_cifar.py): pad-4 crop, flip, policy, Cutout 16 (hole = black).
    `policy` None or `cutout` False leave that step out (the ablation views); the other steps
    keep their keys, as in `augment._cifar_policy_view`."""
    size = image.shape[0]
    keys = jax.random.split(key, 4)
    image = ops.random_flip(ops.pad_crop(image, keys[0], size, tables.CIFAR_PADDING), keys[1])
    if policy == "autoaugment":
        image = cifar10_autoaugment(image, keys[2])
    elif policy == "randaugment":
        image = rand_augment(image, keys[2], fill=tables.GRAY_FILL)
    if not cutout:
        return image
    center_y, center_x = cutout_center(keys[3], size)
    return ops.cutout(image, center_y, center_x, length=tables.CUTOUT_LENGTH)


def cutout_center(key: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """Cutout's hole centre (row, column), each uniform over 0..size-1 (int32 scalars)."""
    center = jax.random.randint(key, (2,), 0, size)
    return center[0], center[1]


def _cifar_standard_view(image: jax.Array, key: jax.Array) -> jax.Array:
    """Pad-4 crop and flip only: the paper's "w/o RandAug" setting of Table 4."""
    keys = jax.random.split(key, 2)
    size = image.shape[0]
    return ops.random_flip(ops.pad_crop(image, keys[0], size, tables.CIFAR_PADDING), keys[1])


def _moco_view(image: jax.Array, key: jax.Array) -> jax.Array:
    """MoCo-v2 key view `sim_cifar`: crop (0.2-1), flip, p=.8 jitter, p=.2 gray, p=.5 blur."""
    height, width = image.shape[0], image.shape[1]
    keys = jax.random.split(key, 4)
    u = jax.random.uniform(keys[0], (4,))
    uniforms = jax.random.uniform(keys[1], (tables.RESIZED_CROP_ATTEMPTS, 4))
    box = ops.random_resized_crop_box(
        height, width, uniforms, scale=tables.MOCO_CROP_SCALE, ratio=tables.CROP_RATIO
    )
    image = ops.random_flip(ops.crop_and_resize(image, box, height), keys[2])
    jittered = color_jitter(image, keys[3], **tables.MOCO_JITTER)
    image = jnp.where(u[0] < tables.MOCO_JITTER_P, jittered, image)
    gray = jnp.broadcast_to(ops.grayscale(image), image.shape)
    image = jnp.where(u[1] < tables.MOCO_GRAY_P, gray, image)
    low, high = tables.BLUR_SIGMA
    blurred = ops.gaussian_blur(image, low + (high - low) * u[3])
    return jnp.where(u[2] < tables.MOCO_BLUR_P, blurred, image)


def _identity_view(image: jax.Array, key: jax.Array) -> jax.Array:
    """CIFAR test view: the image as is."""
    del key
    return image


_VIEW_FNS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "cifar_autoaugment": lambda im, k: _cifar_policy_view(im, k, "autoaugment"),
    "cifar_randaugment": lambda im, k: _cifar_policy_view(im, k, "randaugment"),
    "cifar_standard": _cifar_standard_view,
    "cifar_randaugment_no_cutout": lambda im, k: _cifar_policy_view(
        im, k, "randaugment", cutout=False
    ),
    "cifar_cutout": lambda im, k: _cifar_policy_view(im, k, None),
    "moco_cifar": _moco_view,
    "cifar_test": _identity_view,
}
# The views of augment.VIEWS with a JAX version (the CIFAR ones; the large-image views
# decode and crop on the host).
JAX_VIEWS: tuple[str, ...] = tuple(_VIEW_FNS)


# How a view runs over the N images of a batch: "vmap" (one wide computation) or "map"
# (jax.lax.map, one image after another); "auto" picks per platform (resolve_batching).
BATCHINGS = ("auto", "vmap", "map")


def resolve_batching(batching: str = "auto", platform: str | None = None) -> str:
    """ "vmap" or "map" for `batching`; "auto" is "map" on a CPU and "vmap" elsewhere.

    Why: the policy views pick one op per image with lax.switch. Vmapped, the switch becomes a
    select that computes every branch for every image (16 RandAugment ops, twice); under
    lax.map each image runs only its drawn op, which on a CPU is tens of times faster
    (docs/performance.md). On an accelerator vmap keeps the batch one wide computation rather
    than a loop of small kernels (not measured on one yet). The two may differ in a few
    warp-edge pixels (XLA fuses the coordinate arithmetic differently); each is deterministic.
    platform: jax.default_backend() when None. Raises ValueError for an unknown batching.
    """
    if batching not in BATCHINGS:
        raise ValueError(f"unknown batching {batching!r}; choose one of {', '.join(BATCHINGS)}")
    if batching != "auto":
        return batching
    return "map" if (platform or jax.default_backend()) == "cpu" else "vmap"


def map_images(fn: Callable, images: jax.Array, keys: jax.Array, batching: str) -> jax.Array:
    """fn(image [H, W, 3], key) applied to each of images [N, H, W, 3] with its key, batched
    as `batching` ("vmap" or "map", see resolve_batching)."""
    if batching == "vmap":
        return jax.vmap(fn)(images, keys)
    return jax.lax.map(lambda pair: fn(*pair), (images, keys))


def apply_view(
    name: str,
    images: jax.Array,
    keys: jax.Array,
    *,
    normalization: str = "cifar",
    batching: str = "auto",
) -> jax.Array:
    """The view `name` of each image, keyed by its own PRNG key.

    images: uint8 [N, H, W, 3] (square, H = W = the view's image size); keys: [N] typed PRNG
    keys (jax.random.key) or [N, 2] uint32 raw keys. Returns float32 [N, H, W, 3] =
    (pixel / 255 - mean) / std of `normalization` (augment.make_view's formula and constants).
    batching: how the images are batched (resolve_batching; "auto" follows the platform).
    Deterministic per key and batching; jittable with `name`, `normalization` and `batching`
    static. Raises ValueError for an unknown view, normalisation or batching, or images not
    uint8 [N, H, H, 3].
    """
    if name not in _VIEW_FNS:
        raise ValueError(f"no JAX version of view {name!r}; choose one of {', '.join(JAX_VIEWS)}")
    batching = resolve_batching(batching)
    if normalization not in NORMALIZATION:
        raise ValueError(
            f"unknown normalization {normalization!r}; choose one of {', '.join(NORMALIZATION)}"
        )
    if images.dtype != jnp.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3]; got {images.dtype} {images.shape}")
    if images.shape[1] != images.shape[2]:
        raise ValueError(f"images must be square; got {images.shape[1]}x{images.shape[2]}")
    pixels = map_images(_VIEW_FNS[name], images.astype(jnp.float32), keys, batching)
    levels = jnp.asarray(_normalized_levels(normalization))  # [256, 3]
    return levels[pixels.astype(jnp.int32), jnp.arange(3)]


def _normalized_levels(normalization: str) -> np.ndarray:
    """float32 [256, 3]: augment.make_view's normalisation of each 8-bit level and channel.

    The views' pixels are integers in [0, 255], so normalising is a lookup. A lookup rather
    than `pixels * scale + offset`: XLA fuses that multiply-add into an FMA (one rounding,
    where TF rounds twice), which moves outputs by a float32 ulp. The constants are TF's,
    folded in float64 then cast; the table rounds the product and the sum each in float32.
    """
    mean, std = (np.asarray(v, np.float64) for v in NORMALIZATION[normalization])
    scale = np.asarray(1.0 / (255.0 * std), np.float32)
    offset = np.asarray(-mean / std, np.float32)
    levels = np.arange(256, dtype=np.float32)[:, None]
    return (levels * scale).astype(np.float32) + offset
