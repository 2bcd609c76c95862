"""Single-image ops of the CIFAR views in JAX: the counterparts of `augment_ops.py`.

Same contract as the TF ops: a float32 [H, W, 3] image in pixel space with integer values in
[0, 255] in and out, PIL's rounding after every op, parameters passed in (no random draws here).
Jittable and vmappable: parameters may be traced scalars. tests/test_jax_augment_ops.py holds
each op to its TF counterpart; docs/data.md has the measured agreement.

Why two implementations (TF and JAX) of each op: the tf.data views run on the host inside
TF graph mode (`Dataset.map`), where a JAX function can only be called through
`tf.numpy_function`, a Python callback that holds the GIL, serialises the map's parallel
calls and cannot be traced into the graph; and the host pipelines must keep working where
JAX runs on an accelerator that the host's input threads should not touch. The JAX ops serve
the device-resident pipeline (augmentation on the accelerator, no TensorFlow), the TF ops the
host pipeline; their tables and constants are shared (`augment_tables.py`), and the tests
hold the two to each other op by op.

dm-pix provides: the flip, the random crop offsets, the affine resampler (shear, translate,
rotate), the hue rotation, solarize and the Gaussian blur. Hand-written, each saying why: ops
that dm-pix lacks (posterize, equalize, autocontrast, invert, solarize-add, Cutout, the
RandomResizedCrop box and crop-resize) and ops whose dm-pix version uses another formula than
PIL's (brightness, contrast, saturation/colour, sharpness, grayscale).
"""

from __future__ import annotations

import functools
import math

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np

from ncl_jax.data.augment_tables import Fill

Scalar = jax.Array | float

# On TPUs (and GPUs with TF32) matmuls and convolutions default to reduced precision; the ops
# below must reproduce 8-bit results, so their contractions run in full float32.
_FULL = jax.lax.Precision.HIGHEST


def _floor_clip(x: jax.Array) -> jax.Array:
    """PIL's conversion of a blended float back to 8 bits: truncate, then clip to [0, 255]."""
    return jnp.clip(jnp.floor(x), 0.0, 255.0)


def _round_clip(x: jax.Array) -> jax.Array:
    """PIL's conversion of a filtered/resampled float to 8 bits: round half up, clip."""
    return jnp.clip(jnp.floor(x + 0.5), 0.0, 255.0)


# ---------------------------------------------------------------------------------------------
# Per-pixel lookup ops (PIL.ImageOps).


def invert(image: jax.Array) -> jax.Array:
    """PIL ImageOps.invert. Hand-written: dm-pix has no invert."""
    return 255.0 - image


def solarize(image: jax.Array, threshold: Scalar) -> jax.Array:
    """PIL ImageOps.solarize (invert every value >= threshold), via dm-pix on [0, 1] values.

    x / 255 < t / 255 iff x < t for the integer-valued pixels, and the rounding recovers the
    exact 255 - x, so this equals the 8-bit op.
    """
    out = pix.solarize(image / 255.0, jnp.asarray(threshold, jnp.float32) / 255.0)
    return jnp.floor(out * 255.0 + 0.5)


def solarize_add(image: jax.Array, addition: Scalar, threshold: float = 128.0) -> jax.Array:
    """timm SolarizeAdd: add `addition` (clipped at 255) to every value below threshold.
    Hand-written: dm-pix has no solarize-add."""
    return jnp.where(image < threshold, jnp.minimum(image + addition, 255.0), image)


def posterize(image: jax.Array, bits: jax.Array | int) -> jax.Array:
    """PIL ImageOps.posterize: keep the `bits` most significant bits (0..8) of every value.
    Hand-written: dm-pix has no posterize."""
    bits = jnp.clip(jnp.asarray(bits, jnp.int32), 0, 8)
    mask = 256 - jnp.left_shift(jnp.int32(1), 8 - bits)
    return jnp.bitwise_and(image.astype(jnp.int32), mask).astype(jnp.float32)


@functools.cache
def _autocontrast_float64_misses() -> np.ndarray:
    """Sorted keys (lo * 256 + hi) * 256 + i where PIL's float64 autocontrast formula
    int(i * scale + offset) lands one below the exact floor((i - lo) * 255 / (hi - lo)).

    JAX runs in float32 by default, so `autocontrast` computes the exact integer formula and
    subtracts one at these 12,094 (of 2.8 million) inputs, which reproduces PIL (and the TF
    op's float64 formula) bit for bit.
    """
    keys = []
    for span in range(1, 256):
        lo = np.arange(256 - span)[:, None]
        offset_in_span = np.arange(span + 1)[None, :]
        scale = 255.0 / span
        pil = np.floor((lo + offset_in_span) * scale + (-lo.astype(np.float64) * scale))
        exact = offset_in_span * 255 // span
        row, col = np.nonzero(pil.astype(np.int64) != exact)
        keys.append((lo[row, 0] * 256 + lo[row, 0] + span) * 256 + lo[row, 0] + col)
    return np.sort(np.concatenate(keys)).astype(np.int32)


def autocontrast(image: jax.Array) -> jax.Array:
    """PIL ImageOps.autocontrast (cutoff 0): stretch each channel's [min, max] to [0, 255].

    Hand-written: dm-pix has no autocontrast. Bit for bit with PIL's float64 formula, without
    float64 (see `_autocontrast_float64_misses`).
    """
    lo = jnp.min(image, axis=(0, 1)).astype(jnp.int32)  # [3]
    hi = jnp.max(image, axis=(0, 1)).astype(jnp.int32)
    levels = jnp.arange(256, dtype=jnp.int32)[:, None]  # [256, 1]
    span = jnp.maximum(hi - lo, 1)
    exact = jnp.clip((levels - lo) * 255 // span, 0, 255)  # floor division, as PIL's int()
    misses = jnp.asarray(_autocontrast_float64_misses())
    keys = (lo * 256 + hi) * 256 + levels
    found = misses[jnp.clip(jnp.searchsorted(misses, keys), 0, misses.size - 1)] == keys
    lut = jnp.where(hi > lo, exact - found.astype(jnp.int32), levels)  # [256, 3]
    return (
        jnp.take_along_axis(lut, image.reshape(-1, 3).astype(jnp.int32), axis=0)
        .reshape(image.shape)
        .astype(jnp.float32)
    )


def equalize(image: jax.Array) -> jax.Array:
    """PIL ImageOps.equalize: per-channel histogram equalisation with PIL's integer LUT.
    Hand-written: dm-pix has no equalize."""
    values = image.reshape(-1, 3).astype(jnp.int32)
    index = values + jnp.array([0, 256, 512], jnp.int32)
    hist = jnp.bincount(index.reshape(-1), length=768).reshape(3, 256).astype(jnp.int32)
    total = jnp.sum(hist, axis=1)
    nonzero = jnp.sum(hist > 0, axis=1)
    last_bin = 255 - jnp.argmax(hist[:, ::-1] > 0, axis=1)
    last_count = jnp.take_along_axis(hist, last_bin[:, None], axis=1)[:, 0]
    step = (total - last_count) // 255
    usable = (nonzero > 1) & (step > 0)
    safe_step = jnp.maximum(step, 1)[:, None]
    cum_before = jnp.cumsum(hist, axis=1) - hist
    lut = jnp.minimum((safe_step // 2 + cum_before) // safe_step, 255)
    lut = jnp.where(usable[:, None], lut, jnp.arange(256, dtype=jnp.int32)[None, :])
    out = jnp.take(lut.reshape(-1), index)
    return out.reshape(image.shape).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------
# Blends (PIL.ImageEnhance = Image.blend(degenerate, image, factor) in float32, truncated).
# Hand-written: dm-pix's adjust_brightness is additive, adjust_contrast blends with each
# channel's mean and adjust_saturation works in HSV; torchvision's ColorJitter on PIL images
# (and PIL's ImageEnhance) uses none of these formulas.


def grayscale(image: jax.Array) -> jax.Array:
    """PIL convert('L') (ITU-R 601-2 luma, PIL's fixed-point rounding), as a [H, W, 1] image.
    Hand-written: dm-pix's rgb_to_grayscale uses float weights, not PIL's integer luma."""
    weighted = image.astype(jnp.int32) * jnp.array([19595, 38470, 7471], jnp.int32)
    luma = jnp.right_shift(jnp.sum(weighted, axis=-1, keepdims=True) + 32768, 16)
    return luma.astype(jnp.float32)


def _rounded_product(factor: jax.Array, values: jax.Array) -> jax.Array:
    """float32 factor * values, rounded once, for integer-valued |values| < 256.

    Written so that XLA cannot change the rounding: compiled, XLA fuses `d + f * v` into one
    fused multiply-add (one rounding where TF and PIL round the product and then the sum),
    which moves a truncated blend by one level in about 0.5% of pixels. Splitting f into its
    top 16 significant bits and the rest makes both partial products exact (16 + 8 and 8 + 8
    bits), so fusing them changes nothing, and their one sum is the correctly rounded product.
    """
    bits = jax.lax.bitcast_convert_type(factor, jnp.int32)
    high = jax.lax.bitcast_convert_type(bits & ~0xFF, jnp.float32)
    low = factor - high  # exact (Sterbenz)
    return high * values + low * values


def blend(degenerate: jax.Array, image: jax.Array, factor: Scalar) -> jax.Array:
    """PIL Image.blend: degenerate + factor * (image - degenerate), truncated to 8 bits."""
    factor = jnp.asarray(factor, jnp.float32)
    return _floor_clip(degenerate + _rounded_product(factor, image - degenerate))


def adjust_brightness(image: jax.Array, factor: Scalar) -> jax.Array:
    """PIL ImageEnhance.Brightness (blend with black)."""
    return blend(jnp.zeros_like(image), image, factor)


def adjust_color(image: jax.Array, factor: Scalar) -> jax.Array:
    """PIL ImageEnhance.Color (blend with the image's grayscale) = torchvision saturation."""
    return blend(grayscale(image), image, factor)


def adjust_contrast(image: jax.Array, factor: Scalar) -> jax.Array:
    """PIL ImageEnhance.Contrast (blend with a flat image at the rounded mean luma).

    The rounded mean is computed in integers, floor(S / n + 1/2) = (2 S + n) // (2 n): exact
    without the float64 the TF op uses.
    """
    luma = grayscale(image).astype(jnp.int32)
    count = luma.size
    mean = (2 * jnp.sum(luma) + count) // (2 * count)
    return blend(mean.astype(jnp.float32), image, factor)


def smooth(image: jax.Array) -> jax.Array:
    """PIL ImageFilter.SMOOTH: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]]/13, border pixels kept.
    Hand-written: dm-pix has no SMOOTH filter (nor PIL's keep-the-border rule)."""
    rows = image[:-2] + image[1:-1] + image[2:]
    box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    inner = jnp.floor((box + 4.0 * image[1:-1, 1:-1]) / 13.0 + 0.5)
    return image.at[1:-1, 1:-1].set(inner)


def adjust_sharpness(image: jax.Array, factor: Scalar) -> jax.Array:
    """PIL ImageEnhance.Sharpness (blend with the SMOOTH-filtered image)."""
    return blend(smooth(image), image, factor)


def adjust_hue(image: jax.Array, delta: Scalar) -> jax.Array:
    """Hue rotation by `delta` turns (torchvision hue_factor), via dm-pix's adjust_hue (which
    states equality with tf.image.adjust_hue)."""
    return _round_clip(pix.adjust_hue(image / 255.0, delta) * 255.0)


# ---------------------------------------------------------------------------------------------
# Geometry: PIL Image.transform(AFFINE) semantics on dm-pix's affine resampler.


def affine(
    image: jax.Array,
    matrix: jax.Array | list,
    *,
    fill: Fill,
    interpolation: str = "BILINEAR",
) -> jax.Array:
    """PIL Image.transform(AFFINE): output (x, y) samples input (a x + b y + c, d x + e y + f).

    `matrix` = (a, b, c, d, e, f) in PIL's continuous coordinates (pixel centres at +0.5). An
    output pixel gets `fill` iff its sample point lies outside the image; bilinear sampling
    clamps the neighbours at the border (dm-pix mode "nearest"); the 8-bit result is truncated.
    dm-pix maps output indices (row, col, channel) to input indices, so the map is conjugated
    by the half-pixel shift; NEAREST is nudged by 1e-3 px so the rounding picks PIL's
    floor(v + 0.5) pixel, as in the TF op.
    """
    a, b, c, d, e, f = (jnp.asarray(v, jnp.float32) for v in matrix)
    height, width = image.shape[0], image.shape[1]
    xs = jnp.arange(width, dtype=jnp.float32)[None, :] + 0.5
    ys = jnp.arange(height, dtype=jnp.float32)[:, None] + 0.5
    x_in = a * xs + b * ys + c
    y_in = d * xs + e * ys + f
    inside = (x_in >= 0.0) & (x_in < width) & (y_in >= 0.0) & (y_in < height)
    nudge = 1e-3 if interpolation == "NEAREST" else 0.0
    zero, one = jnp.float32(0.0), jnp.float32(1.0)
    index_map = jnp.stack(
        [
            jnp.stack([e, d, zero, f + 0.5 * (d + e) - 0.5 + nudge]),
            jnp.stack([b, a, zero, c + 0.5 * (a + b) - 0.5 + nudge]),
            jnp.stack([zero, zero, one, zero]),
        ]
    )
    order = 0 if interpolation == "NEAREST" else 1
    sampled = pix.affine_transform(image, index_map, order=order, mode="nearest")
    out = jnp.where(inside[:, :, None], sampled, jnp.asarray(fill, jnp.float32))
    return out if interpolation == "NEAREST" else _floor_clip(out)


def shear_x(
    image: jax.Array, shear: Scalar, *, fill: Fill, interpolation: str = "BILINEAR"
) -> jax.Array:
    """PIL transform (1, shear, 0, 0, 1, 0): x_in = x + shear * y."""
    return affine(image, [1.0, shear, 0.0, 0.0, 1.0, 0.0], fill=fill, interpolation=interpolation)


def shear_y(
    image: jax.Array, shear: Scalar, *, fill: Fill, interpolation: str = "BILINEAR"
) -> jax.Array:
    """PIL transform (1, 0, 0, shear, 1, 0): y_in = y + shear * x."""
    return affine(image, [1.0, 0.0, 0.0, shear, 1.0, 0.0], fill=fill, interpolation=interpolation)


def translate_x(
    image: jax.Array, pixels: Scalar, *, fill: Fill, interpolation: str = "BILINEAR"
) -> jax.Array:
    """PIL transform (1, 0, pixels, 0, 1, 0): content moves left by `pixels`."""
    return affine(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], fill=fill, interpolation=interpolation)


def translate_y(
    image: jax.Array, pixels: Scalar, *, fill: Fill, interpolation: str = "BILINEAR"
) -> jax.Array:
    """PIL transform (1, 0, 0, 0, 1, pixels): content moves up by `pixels`."""
    return affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], fill=fill, interpolation=interpolation)


def rotate(
    image: jax.Array, degrees: Scalar, *, fill: Fill, interpolation: str = "BILINEAR"
) -> jax.Array:
    """PIL Image.rotate(degrees): counter-clockwise about the image centre, same size.

    Through `affine` rather than pix.rotate, which turns about the centre of the pixel grid
    (pixel indices) and fills by clamping, not PIL's continuous-coordinate map and fill colour.
    """
    cx, cy = image.shape[1] / 2.0, image.shape[0] / 2.0
    angle = -jnp.asarray(degrees, jnp.float32) * (math.pi / 180.0)
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    matrix = [cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy]
    return affine(image, matrix, fill=fill, interpolation=interpolation)


# ---------------------------------------------------------------------------------------------
# Blur, Cutout, crops and flips.


def gaussian_blur(image: jax.Array, sigma: Scalar, max_sigma: float = 2.0) -> jax.Array:
    """The TF op's exact separable Gaussian (truncated at 3 * max_sigma, edges replicated),
    via dm-pix's gaussian_blur on the edge-padded image (padding VALID)."""
    radius = int(math.ceil(3.0 * max_sigma))
    padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    with jax.default_matmul_precision("float32"):
        out = pix.gaussian_blur(padded, sigma, kernel_size=2 * radius + 1, padding="VALID")
    return _round_clip(out)


def cutout(image: jax.Array, center_y: jax.Array, center_x: jax.Array, length: int) -> jax.Array:
    """Cutout (DeVries & Taylor): zero the box [c - length//2, c + length//2) clipped to the image.
    Hand-written: neither dm-pix nor jax.image has Cutout."""
    half = length // 2
    rows = jnp.arange(image.shape[0])[:, None, None]
    cols = jnp.arange(image.shape[1])[None, :, None]
    inside = (
        (rows >= center_y - half)
        & (rows < center_y + half)
        & (cols >= center_x - half)
        & (cols < center_x + half)
    )
    return jnp.where(inside, 0.0, image)


def pad_crop(image: jax.Array, key: jax.Array, size: int, padding: int) -> jax.Array:
    """torchvision RandomCrop(size, padding): zero padding, then a uniformly placed window
    (dm-pix random_crop draws the offsets)."""
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    return pix.random_crop(key, padded, (size, size, image.shape[2]))


def random_flip(image: jax.Array, key: jax.Array) -> jax.Array:
    """Left-right flip with probability 1/2 (dm-pix)."""
    return pix.random_flip_left_right(key, image)


def random_resized_crop_box(
    height: int,
    width: int,
    uniforms: jax.Array,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """torchvision RandomResizedCrop.get_params from given U[0,1) draws; returns (top, left, h, w).

    Hand-written (the same algorithm as `augment_ops.random_resized_crop_box`; dm-pix has no
    RandomResizedCrop). `uniforms` is float32 [10, 4]: 10 attempts of (area, log-ratio, top,
    left); the first attempt whose box fits wins, else the centre crop with the ratio clamped.
    """
    h_f, w_f = float(height), float(width)
    area = h_f * w_f * (scale[0] + (scale[1] - scale[0]) * uniforms[:, 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = jnp.exp(log_lo + (log_hi - log_lo) * uniforms[:, 1])
    crop_w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    crop_h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = jnp.argmax(fits)
    top = (uniforms[first, 2] * (height - crop_h[first] + 1).astype(jnp.float32)).astype(jnp.int32)
    left = (uniforms[first, 3] * (width - crop_w[first] + 1).astype(jnp.float32)).astype(jnp.int32)
    in_ratio = w_f / h_f
    if in_ratio < ratio[0]:
        fb_h, fb_w = round(w_f / ratio[0]), width
    elif in_ratio > ratio[1]:
        fb_h, fb_w = height, round(h_f * ratio[1])
    else:
        fb_h, fb_w = height, width
    any_fit = jnp.any(fits)
    return (
        jnp.where(any_fit, top, (height - fb_h) // 2),
        jnp.where(any_fit, left, (width - fb_w) // 2),
        jnp.where(any_fit, crop_h[first], fb_h),
        jnp.where(any_fit, crop_w[first], fb_w),
    )


def _resize_weights(start: jax.Array, length: jax.Array, in_size: int, out_size: int):
    """[out_size, in_size] weights of the TF/PIL bilinear resize of input rows
    [start, start + length) to out_size rows: the triangle kernel widened by the shrink factor
    (antialiasing) and normalised over the rows inside the crop."""
    length_f = length.astype(jnp.float32)
    inv_scale = length_f / out_size
    kernel_scale = jnp.maximum(inv_scale, 1.0)
    sample = (jnp.arange(out_size, dtype=jnp.float32)[:, None] + 0.5) * inv_scale
    source = jnp.arange(in_size, dtype=jnp.float32)[None, :] - start.astype(jnp.float32)
    weights = jnp.maximum(0.0, 1.0 - jnp.abs(source + 0.5 - sample) / kernel_scale)
    weights = jnp.where((source >= 0) & (source < length_f), weights, 0.0)
    return weights / jnp.sum(weights, axis=1, keepdims=True)


def crop_and_resize(image: jax.Array, box, size: int) -> jax.Array:
    """Crop (top, left, h, w), resize to size x size: torchvision RandomResizedCrop, bilinear,
    antialiased when shrinking (as `augment_ops.crop_and_resize`).

    Hand-written as two weight matrices: the crop's size is traced, and jax.image's
    scale_and_translate (dm-pix has no resize) normalises its kernel over the whole input, so
    it would blend pixels from outside the crop into the crop's edge rows and columns.
    """
    top, left, crop_h, crop_w = box
    rows = _resize_weights(top, crop_h, image.shape[0], size)
    cols = _resize_weights(left, crop_w, image.shape[1], size)
    out = jnp.einsum("yh,hwc,xw->yxc", rows, image, cols, precision=_FULL)
    return _round_clip(out)
