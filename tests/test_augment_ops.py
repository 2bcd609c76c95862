"""Each hand-written image op of ncl_jax.data.augment_ops against PIL or a numpy statement of
what it must do: lookup, blend and blur ops, Cutout, and the geometric ops and crops."""

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from ncl_jax.data import augment
from ncl_jax.data import augment_ops as ops
from tests.augment_helpers import FILL, IMAGES, as_np, as_tf, noise, pil, rng, smooth_image

# ---------------------------------------------------------------------------------------------
# Lookup and blend ops: bit-exact against PIL.


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_lookup_ops_match_pil(name):
    x = IMAGES[name]
    im = Image.fromarray(x)
    np.testing.assert_array_equal(as_np(ops.autocontrast(as_tf(x))), pil(ImageOps.autocontrast(im)))
    np.testing.assert_array_equal(as_np(ops.equalize(as_tf(x))), pil(ImageOps.equalize(im)))
    np.testing.assert_array_equal(as_np(ops.invert(as_tf(x))), pil(ImageOps.invert(im)))
    for bits in range(1, 9):
        want = pil(ImageOps.posterize(im, bits))
        np.testing.assert_array_equal(as_np(ops.posterize(as_tf(x), bits)), want)
    # PIL >= 9 rejects 0 bits; the PIL of the official code kept none: an all-black image.
    np.testing.assert_array_equal(as_np(ops.posterize(as_tf(x), 0)), np.zeros_like(x))
    for threshold in (0.0, 28.44, 113.78, 128.0, 199.11, 256.0):
        want = pil(ImageOps.solarize(im, threshold))
        np.testing.assert_array_equal(as_np(ops.solarize(as_tf(x), threshold)), want)
    for addition in (0, 37, 110):
        want = np.where(x < 128, np.minimum(x.astype(int) + addition, 255), x)
        np.testing.assert_array_equal(as_np(ops.solarize_add(as_tf(x), float(addition))), want)


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_enhance_ops_match_pil(name):
    x = IMAGES[name]
    im = Image.fromarray(x)
    np.testing.assert_array_equal(as_np(ops.grayscale(as_tf(x)))[..., 0], pil(im.convert("L")))
    np.testing.assert_array_equal(as_np(ops.smooth(as_tf(x))), pil(im.filter(ImageFilter.SMOOTH)))
    cases = [
        (ops.adjust_color, ImageEnhance.Color),
        (ops.adjust_contrast, ImageEnhance.Contrast),
        (ops.adjust_brightness, ImageEnhance.Brightness),
        (ops.adjust_sharpness, ImageEnhance.Sharpness),
    ]
    for factor in (0.0, 0.1, 0.55, 1.0, 1.37, 1.9):
        for op, enhancer in cases:
            want = pil(enhancer(im).enhance(factor))
            got = as_np(op(as_tf(x), factor))
            np.testing.assert_array_equal(got, want, err_msg=f"{op} {factor}")


def test_hue_shift():
    # Known input: a hue shift of a third of a turn maps red to green, green to blue.
    x = np.array([[[255, 0, 0], [0, 255, 0], [40, 40, 40]]], np.uint8)
    out = as_np(ops.adjust_hue(as_tf(x), 1.0 / 3.0))
    np.testing.assert_array_equal(out, [[[0, 255, 0], [0, 0, 255], [40, 40, 40]]])
    np.testing.assert_array_equal(as_np(ops.adjust_hue(as_tf(noise()), 0.0)), noise())


@pytest.mark.parametrize("sigma", [0.1, 0.5, 0.7, 1.0, 1.5, 2.0])
def test_gaussian_blur_close_to_pil(sigma):
    # PIL approximates the Gaussian with box blurs, so agreement is close but not exact.
    x = smooth_image()
    got = np.asarray(ops.gaussian_blur(as_tf(x), sigma))
    want = pil(Image.fromarray(x).filter(ImageFilter.GaussianBlur(sigma)))
    diff = np.abs(got - want)
    assert diff.mean() <= 1.0 and diff.max() <= 6, (diff.mean(), diff.max())


@pytest.mark.parametrize("center", [(0, 0), (5, 20), (16, 16), (31, 31), (10, 31)])
def test_cutout_box(center):
    x = noise(32, 32, lo=1)
    out = as_np(ops.cutout(as_tf(x), tf.constant(center[0]), tf.constant(center[1]), 16))
    want = x.astype(np.int64).copy()
    y, c = center
    want[max(y - 8, 0) : min(y + 8, 32), max(c - 8, 0) : min(c + 8, 32)] = 0
    np.testing.assert_array_equal(out, want)


# ---------------------------------------------------------------------------------------------
# Geometry.


def test_translate_known_input():
    x = noise(6, 8)
    out = as_np(ops.translate_x(as_tf(x), 2.0, fill=FILL, interpolation="NEAREST"))
    np.testing.assert_array_equal(out[:, :6], x[:, 2:])
    np.testing.assert_array_equal(out[:, 6:], np.broadcast_to(FILL, (6, 2, 3)))
    out = as_np(ops.translate_y(as_tf(x), -1.0, fill=FILL, interpolation="NEAREST"))
    np.testing.assert_array_equal(out[1:], x[:-1])
    np.testing.assert_array_equal(out[0], np.broadcast_to(FILL, (8, 3)))


def test_rotate_known_input():
    x = noise(10, 10)
    out = as_np(ops.rotate(as_tf(x), 90.0, fill=FILL, interpolation="NEAREST"))
    np.testing.assert_array_equal(out, np.rot90(x, 1))  # counter-clockwise
    # Bilinear lands on pixel centres up to float32 error, which truncation can turn into -1.
    out = as_np(ops.rotate(as_tf(x), 90.0, fill=FILL, interpolation="BILINEAR"))
    assert np.abs(out - np.rot90(x, 1)).max() <= 1


@pytest.mark.parametrize("pixels", [-14.5, -3.0, 0.5, 5.25, 14.5])
def test_translate_matches_pil(pixels):
    x = noise()
    im = Image.fromarray(x)
    for interpolation, resample in (("NEAREST", Image.NEAREST), ("BILINEAR", Image.BILINEAR)):
        for op, matrix in (
            (ops.translate_x, (1, 0, pixels, 0, 1, 0)),
            (ops.translate_y, (1, 0, 0, 0, 1, pixels)),
        ):
            want = pil(im.transform(im.size, Image.AFFINE, matrix, resample, fillcolor=FILL))
            got = as_np(op(as_tf(x), pixels, fill=FILL, interpolation=interpolation))
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("degrees", [-30.0, 6.67, 17.0])
def test_rotate_matches_pil(degrees):
    x = noise()
    im = Image.fromarray(x)
    for interpolation, resample in (("NEAREST", Image.NEAREST), ("BILINEAR", Image.BILINEAR)):
        want = pil(im.rotate(degrees, resample=resample, fillcolor=FILL))
        got = as_np(ops.rotate(as_tf(x), degrees, fill=FILL, interpolation=interpolation))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shear", [-0.3, -0.1, 0.2, 0.3])
def test_shear_matches_pil_bilinear(shear):
    x = noise()
    im = Image.fromarray(x)
    for op, matrix in (
        (ops.shear_x, (1, shear, 0, 0, 1, 0)),
        (ops.shear_y, (1, 0, 0, shear, 1, 0)),
    ):
        want = pil(im.transform(im.size, Image.AFFINE, matrix, Image.BILINEAR, fillcolor=FILL))
        got = as_np(op(as_tf(x), shear, fill=FILL))
        # float32 vs PIL's double arithmetic before truncation: at most one level apart.
        assert np.abs(got - want).max() <= 1
        assert np.mean(got != want) < 0.05


def _torchvision_rrc(height, width, uniforms, scale, ratio):
    """torchvision RandomResizedCrop.get_params, restated in numpy with the given draws."""
    area = height * width
    for attempt in range(10):
        u_area, u_ratio, u_top, u_left = uniforms[attempt]
        target_area = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u_top * (height - h + 1)), int(u_left * (width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@pytest.mark.parametrize(
    "height,width,scale", [(32, 32, (0.2, 1.0)), (375, 500, (0.08, 1.0)), (60, 20, (0.08, 1.0))]
)
def test_random_resized_crop_box_matches_torchvision(height, width, scale):
    ratio = (3 / 4, 4 / 3)
    gen = rng(1)
    areas = []
    for _ in range(50):
        uniforms = gen.random((10, 4)).astype(np.float32)
        got = ops.random_resized_crop_box(
            tf.constant(height), tf.constant(width), tf.constant(uniforms), scale=scale, ratio=ratio
        )
        got = tuple(int(v) for v in got)
        want = _torchvision_rrc(height, width, uniforms.astype(np.float64), scale, ratio)
        # float32 vs float64 can move a rounding boundary by one pixel.
        assert np.abs(np.subtract(got, want)).max() <= 1, (got, want)
        top, left, h, w = got
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        areas.append(h * w / (height * width))
    assert min(areas) >= scale[0] * 0.8 and max(areas) <= 1.0


def test_random_resized_crop_box_fallback():
    # A 10x100 strip: no box of >= 90% area with ratio <= 4/3 fits, so the centre crop is used.
    uniforms = tf.constant(rng().random((10, 4)), tf.float32)
    box = ops.random_resized_crop_box(10, 100, uniforms, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3))
    assert tuple(int(v) for v in box) == (0, 43, 10, 13)


@pytest.mark.parametrize("shape", [(20, 25), (40, 50), (120, 90)])
def test_crop_and_resize_matches_pil(shape):
    x = smooth_image(*shape)
    got = as_np(ops.crop_and_resize(as_tf(x), (2, 3, shape[0] - 4, shape[1] - 5), 32))
    crop = Image.fromarray(x[2 : shape[0] - 2, 3 : shape[1] - 2])
    want = pil(crop.resize((32, 32), Image.BILINEAR))
    assert np.abs(got - want).max() <= 1


@pytest.mark.parametrize("shape", [(45, 60), (70, 37), (37, 37)])
def test_resize_center_crop_matches_pil(shape):
    x = smooth_image(*shape)
    got = as_np(ops.resize_shorter_center_crop(as_tf(x), 37, 32))
    h, w = shape
    new_h, new_w = (37, int(37 * w / h)) if h <= w else (int(37 * h / w), 37)
    resized = Image.fromarray(x).resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - 32) / 2)), int(round((new_w - 32) / 2))
    want = pil(resized)[top : top + 32, left : left + 32]
    assert np.abs(got - want).max() <= 1


def test_pad_crop_and_flip_known_input():
    x = noise(32, 32, lo=1)
    padded = np.pad(x, [(4, 4), (4, 4), (0, 0)])
    windows = {(t, c): padded[t : t + 32, c : c + 32] for t in range(9) for c in range(9)}
    offsets, flips = set(), set()
    for i in range(60):
        seed = tf.constant([i, 1], tf.int64)
        crop = as_np(augment._pad_crop(as_tf(x), seed, 32, 4))
        offsets.add(next(k for k, w in windows.items() if np.array_equal(w, crop)))
        flipped = as_np(augment._flip(as_tf(x), seed))
        assert np.array_equal(flipped, x) or np.array_equal(flipped, x[:, ::-1])
        flips.add(np.array_equal(flipped, x))
    assert {t for t, _ in offsets} >= {0, 8} and {c for _, c in offsets} >= {0, 8}
    assert flips == {True, False}
