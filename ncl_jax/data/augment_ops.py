"""Single image operations for the augmentation policies in `augment.py`, in TF graph ops.

Every op takes and returns a float32 [H, W, 3] image in pixel space whose values are integers in
[0, 255]: the official code runs these ops on 8-bit PIL images, which round after every op, so
the ops here round the same way. The lookup, blend and affine ops reproduce PIL bit for bit
(bilinear shear to within one level); tests/test_augment_ops.py checks each against PIL. No op
draws random numbers: callers pass the sampled parameters, so determinism is decided in one
place (`augment.py`).
"""

from __future__ import annotations

import math

import tensorflow as tf

Fill = tuple[float, float, float]
Scalar = tf.Tensor | float


def _floor_clip(x: tf.Tensor) -> tf.Tensor:
    """PIL's conversion of a blended float back to 8 bits: truncate, then clip to [0, 255]."""
    return tf.clip_by_value(tf.floor(x), 0.0, 255.0)


def _round_clip(x: tf.Tensor) -> tf.Tensor:
    """PIL's conversion of a filtered/resampled float to 8 bits: round half up, clip."""
    return tf.clip_by_value(tf.floor(x + 0.5), 0.0, 255.0)


# ---------------------------------------------------------------------------------------------
# Per-pixel lookup ops (PIL.ImageOps). Hand-written: TF has no histogram-equalize, autocontrast,
# posterize or solarize op.


def invert(image: tf.Tensor) -> tf.Tensor:
    """PIL ImageOps.invert."""
    return 255.0 - image


def solarize(image: tf.Tensor, threshold: Scalar) -> tf.Tensor:
    """PIL ImageOps.solarize: invert every value >= threshold."""
    return tf.where(image < threshold, image, 255.0 - image)


def solarize_add(image: tf.Tensor, addition: Scalar, threshold: float = 128.0):
    """timm SolarizeAdd: add `addition` (clipped at 255) to every value below threshold."""
    return tf.where(image < threshold, tf.minimum(image + addition, 255.0), image)


def posterize(image: tf.Tensor, bits: tf.Tensor | int) -> tf.Tensor:
    """PIL ImageOps.posterize: keep the `bits` most significant bits (0..8) of every value."""
    bits = tf.clip_by_value(tf.cast(bits, tf.int32), 0, 8)
    mask = 256 - tf.bitwise.left_shift(1, 8 - bits)
    return tf.cast(tf.bitwise.bitwise_and(tf.cast(image, tf.int32), mask), tf.float32)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
    """PIL ImageOps.autocontrast (cutoff 0): stretch each channel's [min, max] to [0, 255].

    Computed in float64 with PIL's formula (int(i * scale + offset)) so results match bit for bit.
    """
    lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float64)
    hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float64)
    valid = hi > lo
    scale = tf.where(valid, 255.0 / tf.where(valid, hi - lo, 1.0), 1.0)
    offset = tf.where(valid, -lo * scale, 0.0)
    out = tf.floor(tf.cast(image, tf.float64) * scale + offset)
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.float32)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """PIL ImageOps.equalize: per-channel histogram equalisation with PIL's integer LUT."""
    values = tf.cast(tf.reshape(image, [-1, 3]), tf.int32)
    index = values + tf.constant([0, 256, 512], tf.int32)
    hist = tf.reshape(tf.math.bincount(index, minlength=768, maxlength=768), [3, 256])
    total = tf.reduce_sum(hist, axis=1)
    nonzero = tf.math.count_nonzero(hist, axis=1, dtype=tf.int32)
    occupied = tf.reverse(tf.cast(hist > 0, tf.int32), [1])
    last_bin = 255 - tf.argmax(occupied, axis=1, output_type=tf.int32)
    last_count = tf.gather(hist, last_bin, batch_dims=1)
    step = (total - last_count) // 255
    usable = tf.logical_and(nonzero > 1, step > 0)
    safe_step = tf.maximum(step, 1)[:, None]
    cum_before = tf.cumsum(hist, axis=1, exclusive=True)
    lut = tf.minimum((safe_step // 2 + cum_before) // safe_step, 255)
    lut = tf.where(usable[:, None], lut, tf.range(256, dtype=tf.int32)[None, :])
    out = tf.gather(tf.reshape(lut, [-1]), index)
    return tf.reshape(tf.cast(out, tf.float32), tf.shape(image))


# ---------------------------------------------------------------------------------------------
# Blends (PIL.ImageEnhance = Image.blend(degenerate, image, factor) in float32, truncated).
# Hand-written: tf.image.adjust_* use other formulas (additive brightness, per-channel contrast
# mean, HSV saturation), which torchvision's ColorJitter on PIL images does not.


def grayscale(image: tf.Tensor) -> tf.Tensor:
    """PIL convert('L') (ITU-R 601-2 luma, PIL's fixed-point rounding), as a [H, W, 1] image.

    Hand-written rather than tf.image.rgb_to_grayscale to reproduce PIL's exact integer luma.
    """
    rgb = tf.cast(image, tf.int32)
    weighted = rgb * tf.constant([19595, 38470, 7471], tf.int32)
    luma = tf.bitwise.right_shift(tf.reduce_sum(weighted, axis=-1, keepdims=True) + 32768, 16)
    return tf.cast(luma, tf.float32)


def blend(degenerate: tf.Tensor, image: tf.Tensor, factor: Scalar) -> tf.Tensor:
    """PIL Image.blend: degenerate + factor * (image - degenerate), truncated to 8 bits."""
    factor = tf.cast(factor, tf.float32)
    return _floor_clip(degenerate + factor * (image - degenerate))


def adjust_brightness(image: tf.Tensor, factor: Scalar) -> tf.Tensor:
    """PIL ImageEnhance.Brightness (blend with black)."""
    return blend(tf.zeros_like(image), image, factor)


def adjust_color(image: tf.Tensor, factor: Scalar) -> tf.Tensor:
    """PIL ImageEnhance.Color (blend with the image's grayscale) = torchvision saturation."""
    return blend(grayscale(image), image, factor)


def adjust_contrast(image: tf.Tensor, factor: Scalar) -> tf.Tensor:
    """PIL ImageEnhance.Contrast (blend with a flat image at the rounded mean luma)."""
    mean = tf.reduce_mean(tf.cast(grayscale(image), tf.float64))
    return blend(tf.cast(tf.floor(mean + 0.5), tf.float32), image, factor)


def smooth(image: tf.Tensor) -> tf.Tensor:
    """PIL ImageFilter.SMOOTH: 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]]/13, border pixels kept.

    Written as shifted-slice sums: on small images this is ~4x cheaper than a depthwise conv.
    """
    rows = image[:-2] + image[1:-1] + image[2:]
    box = rows[:, :-2] + rows[:, 1:-1] + rows[:, 2:]
    inner = tf.floor((box + 4.0 * image[1:-1, 1:-1]) / 13.0 + 0.5)
    padded = tf.pad(inner, [[1, 1], [1, 1], [0, 0]])
    interior = tf.pad(tf.ones_like(inner, tf.bool), [[1, 1], [1, 1], [0, 0]])
    return tf.where(interior, padded, image)


def adjust_sharpness(image: tf.Tensor, factor: Scalar) -> tf.Tensor:
    """PIL ImageEnhance.Sharpness (blend with the SMOOTH-filtered image)."""
    return blend(smooth(image), image, factor)


def adjust_hue(image: tf.Tensor, delta: Scalar) -> tf.Tensor:
    """Hue rotation by `delta` turns (torchvision hue_factor), via tf.image.adjust_hue."""
    return _round_clip(tf.image.adjust_hue(image / 255.0, delta) * 255.0)


# ---------------------------------------------------------------------------------------------
# Geometry: PIL Image.transform(AFFINE) semantics on top of tf.raw_ops.ImageProjectiveTransformV3.


def affine(
    image: tf.Tensor,
    matrix: tf.Tensor | list[float],
    *,
    fill: Fill,
    interpolation: str = "BILINEAR",
) -> tf.Tensor:
    """PIL Image.transform(AFFINE): output (x, y) samples input (a x + b y + c, d x + e y + f).

    `matrix` = (a, b, c, d, e, f) in PIL's continuous coordinates (pixel centres at +0.5). As in
    PIL, an output pixel gets `fill` iff its sample point lies outside the image, and bilinear
    sampling near the border clamps the neighbours; the 8-bit result is truncated. TF's op
    works in pixel indices, so the map is conjugated by the half-pixel shift, and NEAREST is
    nudged by 1e-3 px so TF's round-half-away-from-zero picks PIL's floor(v + 0.5) pixel.
    """
    a, b, c, d, e, f = tf.unstack(tf.cast(tf.convert_to_tensor(matrix), tf.float32))
    shape = tf.shape(image)
    height, width = tf.cast(shape[0], tf.float32), tf.cast(shape[1], tf.float32)
    xs = tf.range(width)[None, :] + 0.5
    ys = tf.range(height)[:, None] + 0.5
    x_in = a * xs + b * ys + c
    y_in = d * xs + e * ys + f
    inside = (x_in >= 0.0) & (x_in < width) & (y_in >= 0.0) & (y_in < height)
    nudge = 1e-3 if interpolation == "NEAREST" else 0.0
    transform = [a, b, c + 0.5 * (a + b) - 0.5 + nudge, d, e, f + 0.5 * (d + e) - 0.5 + nudge]
    sampled = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=tf.stack(transform + [0.0, 0.0])[None],
        output_shape=shape[:2],
        fill_value=0.0,
        interpolation=interpolation,
        fill_mode="NEAREST",
    )[0]
    out = tf.where(inside[:, :, None], sampled, tf.constant(fill, tf.float32))
    return out if interpolation == "NEAREST" else _floor_clip(out)


def shear_x(
    image: tf.Tensor, shear: Scalar, *, fill: Fill, interpolation: str = "BILINEAR"
) -> tf.Tensor:
    """PIL transform (1, shear, 0, 0, 1, 0): x_in = x + shear * y."""
    return affine(image, [1.0, shear, 0.0, 0.0, 1.0, 0.0], fill=fill, interpolation=interpolation)


def shear_y(
    image: tf.Tensor, shear: Scalar, *, fill: Fill, interpolation: str = "BILINEAR"
) -> tf.Tensor:
    """PIL transform (1, 0, 0, shear, 1, 0): y_in = y + shear * x."""
    return affine(image, [1.0, 0.0, 0.0, shear, 1.0, 0.0], fill=fill, interpolation=interpolation)


def translate_x(
    image: tf.Tensor, pixels: Scalar, *, fill: Fill, interpolation: str = "BILINEAR"
) -> tf.Tensor:
    """PIL transform (1, 0, pixels, 0, 1, 0): content moves left by `pixels`."""
    return affine(image, [1.0, 0.0, pixels, 0.0, 1.0, 0.0], fill=fill, interpolation=interpolation)


def translate_y(
    image: tf.Tensor, pixels: Scalar, *, fill: Fill, interpolation: str = "BILINEAR"
) -> tf.Tensor:
    """PIL transform (1, 0, 0, 0, 1, pixels): content moves up by `pixels`."""
    return affine(image, [1.0, 0.0, 0.0, 0.0, 1.0, pixels], fill=fill, interpolation=interpolation)


def rotate(
    image: tf.Tensor, degrees: Scalar, *, fill: Fill, interpolation: str = "BILINEAR"
) -> tf.Tensor:
    """PIL Image.rotate(degrees): counter-clockwise about the image centre, same size."""
    shape = tf.cast(tf.shape(image), tf.float32)
    cx, cy = shape[1] / 2.0, shape[0] / 2.0
    angle = -tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    matrix = [cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy]
    return affine(image, matrix, fill=fill, interpolation=interpolation)


# ---------------------------------------------------------------------------------------------
# Other ops without a TF equivalent.


def gaussian_blur(image: tf.Tensor, sigma: Scalar, max_sigma: float = 2.0) -> tf.Tensor:
    """Gaussian blur with edge replication, standing in for PIL ImageFilter.GaussianBlur(sigma).

    Hand-written (tf.image has no blur). PIL approximates the Gaussian with three box blurs; this
    is the exact separable Gaussian truncated at 3 * max_sigma (a few levels apart on edges).
    """
    radius = int(math.ceil(3.0 * max_sigma))
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    sigma = tf.cast(sigma, tf.float32)
    weights = tf.exp(-0.5 * tf.square(taps / sigma))
    weights = weights / tf.reduce_sum(weights)
    shape = tf.shape(image)
    rows = tf.clip_by_value(tf.range(-radius, shape[0] + radius), 0, shape[0] - 1)
    cols = tf.clip_by_value(tf.range(-radius, shape[1] + radius), 0, shape[1] - 1)
    padded = tf.gather(tf.gather(image, rows, axis=0), cols, axis=1)[None]
    kernel_v = tf.tile(weights[:, None, None, None], [1, 1, 3, 1])
    kernel_h = tf.tile(weights[None, :, None, None], [1, 1, 3, 1])
    out = tf.nn.depthwise_conv2d(padded, kernel_v, [1, 1, 1, 1], "VALID")
    out = tf.nn.depthwise_conv2d(out, kernel_h, [1, 1, 1, 1], "VALID")
    return _round_clip(out[0])


def cutout(image: tf.Tensor, center_y: tf.Tensor, center_x: tf.Tensor, length: int) -> tf.Tensor:
    """Cutout (DeVries & Taylor): zero the box [c - length//2, c + length//2) clipped to the image.

    Hand-written: no TF op zeroes a box at a tensor-valued position.
    """
    shape = tf.shape(image)
    half = length // 2
    y1 = tf.clip_by_value(center_y - half, 0, shape[0])
    y2 = tf.clip_by_value(center_y + half, 0, shape[0])
    x1 = tf.clip_by_value(center_x - half, 0, shape[1])
    x2 = tf.clip_by_value(center_x + half, 0, shape[1])
    rows = tf.range(shape[0])[:, None, None]
    cols = tf.range(shape[1])[None, :, None]
    inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
    return tf.where(inside, tf.zeros_like(image), image)


def random_resized_crop_box(
    height: tf.Tensor,
    width: tf.Tensor,
    uniforms: tf.Tensor,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """torchvision RandomResizedCrop.get_params from given U[0,1) draws; returns (top, left, h, w).

    Hand-written: tf.image.sample_distorted_bounding_box samples the height (not the area)
    uniformly and the aspect ratio linearly (not log-uniformly), a different crop distribution.
    `uniforms` is float32 [10, 4]: 10 attempts of (area, log-ratio, top, left); the first attempt
    whose box fits wins, else the centre crop with the ratio clamped to `ratio`.
    """
    h_f, w_f = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    area = h_f * w_f * (scale[0] + (scale[1] - scale[0]) * uniforms[:, 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * uniforms[:, 1])
    crop_w = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)
    crop_h = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (crop_w > 0) & (crop_w <= width) & (crop_h > 0) & (crop_h <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    top = tf.cast(uniforms[first, 2] * tf.cast(height - crop_h[first] + 1, tf.float32), tf.int32)
    left = tf.cast(uniforms[first, 3] * tf.cast(width - crop_w[first] + 1, tf.float32), tf.int32)

    in_ratio = w_f / h_f
    fb_w = tf.where(
        in_ratio < ratio[0],
        width,
        tf.where(in_ratio > ratio[1], tf.cast(tf.round(h_f * ratio[1]), tf.int32), width),
    )
    fb_h = tf.where(
        in_ratio < ratio[0],
        tf.cast(tf.round(w_f / ratio[0]), tf.int32),
        height,
    )
    any_fit = tf.reduce_any(fits)
    crop_h = tf.where(any_fit, crop_h[first], fb_h)
    crop_w = tf.where(any_fit, crop_w[first], fb_w)
    top = tf.where(any_fit, top, (height - fb_h) // 2)
    left = tf.where(any_fit, left, (width - fb_w) // 2)
    return top, left, crop_h, crop_w


def _resize_bilinear(image: tf.Tensor, height: tf.Tensor | int, width: tf.Tensor | int):
    """PIL-style bilinear resize: antialiased when shrinking; the plain (4x cheaper) kernel
    when enlarging, where antialiasing changes nothing."""
    shape = tf.shape(image)
    size = tf.stack([height, width])
    shrinks = tf.logical_or(shape[0] > height, shape[1] > width)
    out = tf.cond(
        shrinks,
        lambda: tf.image.resize(image, size, method="bilinear", antialias=True),
        lambda: tf.image.resize(image, size, method="bilinear"),
    )
    return _round_clip(out)


def crop_and_resize(image: tf.Tensor, box, size: int) -> tf.Tensor:
    """Crop (top, left, h, w), resize to size x size: torchvision RandomResizedCrop, bilinear."""
    top, left, crop_h, crop_w = box
    crop = tf.slice(image, tf.stack([top, left, 0]), tf.stack([crop_h, crop_w, 3]))
    return tf.ensure_shape(_resize_bilinear(crop, size, size), [size, size, 3])


def resize_shorter_center_crop(image: tf.Tensor, resize_to: int, size: int) -> tf.Tensor:
    """torchvision Resize(resize_to) (shorter side; longer = int(resize_to * long / short)) then
    CenterCrop(size) with top = round((h - size) / 2) (half to even, like Python's round)."""
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    short, long = tf.minimum(h, w), tf.maximum(h, w)
    new_long = (resize_to * long) // short
    new_h = tf.where(h <= w, resize_to, new_long)
    new_w = tf.where(h <= w, new_long, resize_to)
    resized = _resize_bilinear(image, new_h, new_w)
    top = tf.cast(tf.round(tf.cast(new_h - size, tf.float32) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - size, tf.float32) / 2.0), tf.int32)
    return tf.slice(resized, tf.stack([top, left, 0]), [size, size, 3])
