"""Tests for ncl_jax.data.augment(_ops): each hand-written op against PIL or a numpy statement of
what it must do, the policies against PIL statements of the official ops, and every view for
shape, range, determinism and use inside tf.data."""

import math

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

tf.config.set_visible_devices([], "GPU")

from ncl_jax.data import augment  # noqa: E402
from ncl_jax.data import augment_ops as ops  # noqa: E402

FILL = (124, 116, 104)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _noise(h: int = 20, w: int = 24, lo: int = 0, hi: int = 256, seed: int = 0) -> np.ndarray:
    return _rng(seed).integers(lo, hi, (h, w, 3), dtype=np.uint8)


def _smooth_image(h: int = 40, w: int = 40, seed: int = 0) -> np.ndarray:
    """A photo-like image: low-resolution noise upsampled bicubically."""
    return np.asarray(Image.fromarray(_noise(8, 8, seed=seed)).resize((w, h), Image.BICUBIC))


# Test images: full range, narrow range, few distinct values, constant, a dominant value.
_IMAGES = {
    "noise": _noise(),
    "narrow": _noise(lo=40, hi=171, seed=1),
    "few_values": (_noise(seed=2) // 64 * 64).astype(np.uint8),
    "constant": np.full((12, 10, 3), 77, np.uint8),
    "dominant": np.where(_noise(seed=3) < 200, 255, _noise(seed=4)).astype(np.uint8),
}


def _tf(x: np.ndarray) -> tf.Tensor:
    return tf.constant(x.astype(np.float32))


def _np(x: tf.Tensor) -> np.ndarray:
    return np.asarray(x).astype(np.int64)


def _ref(im: Image.Image) -> np.ndarray:
    return np.asarray(im).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# Lookup and blend ops: bit-exact against PIL.


@pytest.mark.parametrize("name", sorted(_IMAGES))
def test_lookup_ops_match_pil(name):
    x = _IMAGES[name]
    im = Image.fromarray(x)
    np.testing.assert_array_equal(_np(ops.autocontrast(_tf(x))), _ref(ImageOps.autocontrast(im)))
    np.testing.assert_array_equal(_np(ops.equalize(_tf(x))), _ref(ImageOps.equalize(im)))
    np.testing.assert_array_equal(_np(ops.invert(_tf(x))), _ref(ImageOps.invert(im)))
    for bits in range(1, 9):
        want = _ref(ImageOps.posterize(im, bits))
        np.testing.assert_array_equal(_np(ops.posterize(_tf(x), bits)), want)
    # PIL >= 9 rejects 0 bits; the PIL of the official code kept none: an all-black image.
    np.testing.assert_array_equal(_np(ops.posterize(_tf(x), 0)), np.zeros_like(x))
    for threshold in (0.0, 28.44, 113.78, 128.0, 199.11, 256.0):
        want = _ref(ImageOps.solarize(im, threshold))
        np.testing.assert_array_equal(_np(ops.solarize(_tf(x), threshold)), want)
    for addition in (0, 37, 110):
        want = np.where(x < 128, np.minimum(x.astype(int) + addition, 255), x)
        np.testing.assert_array_equal(_np(ops.solarize_add(_tf(x), float(addition))), want)


@pytest.mark.parametrize("name", sorted(_IMAGES))
def test_enhance_ops_match_pil(name):
    x = _IMAGES[name]
    im = Image.fromarray(x)
    np.testing.assert_array_equal(_np(ops.grayscale(_tf(x)))[..., 0], _ref(im.convert("L")))
    np.testing.assert_array_equal(_np(ops.smooth(_tf(x))), _ref(im.filter(ImageFilter.SMOOTH)))
    cases = [
        (ops.adjust_color, ImageEnhance.Color),
        (ops.adjust_contrast, ImageEnhance.Contrast),
        (ops.adjust_brightness, ImageEnhance.Brightness),
        (ops.adjust_sharpness, ImageEnhance.Sharpness),
    ]
    for factor in (0.0, 0.1, 0.55, 1.0, 1.37, 1.9):
        for op, enhancer in cases:
            want = _ref(enhancer(im).enhance(factor))
            np.testing.assert_array_equal(_np(op(_tf(x), factor)), want, err_msg=f"{op} {factor}")


def test_hue_shift():
    # Known input: a hue shift of a third of a turn maps red to green, green to blue.
    x = np.array([[[255, 0, 0], [0, 255, 0], [40, 40, 40]]], np.uint8)
    out = _np(ops.adjust_hue(_tf(x), 1.0 / 3.0))
    np.testing.assert_array_equal(out, [[[0, 255, 0], [0, 0, 255], [40, 40, 40]]])
    np.testing.assert_array_equal(_np(ops.adjust_hue(_tf(_noise()), 0.0)), _noise())


@pytest.mark.parametrize("sigma", [0.1, 0.5, 0.7, 1.0, 1.5, 2.0])
def test_gaussian_blur_close_to_pil(sigma):
    # PIL approximates the Gaussian with box blurs, so agreement is close but not exact.
    x = _smooth_image()
    got = np.asarray(ops.gaussian_blur(_tf(x), sigma))
    want = _ref(Image.fromarray(x).filter(ImageFilter.GaussianBlur(sigma)))
    diff = np.abs(got - want)
    assert diff.mean() <= 1.0 and diff.max() <= 6, (diff.mean(), diff.max())


@pytest.mark.parametrize("center", [(0, 0), (5, 20), (16, 16), (31, 31), (10, 31)])
def test_cutout_box(center):
    x = _noise(32, 32, lo=1)
    out = _np(ops.cutout(_tf(x), tf.constant(center[0]), tf.constant(center[1]), 16))
    want = x.astype(np.int64).copy()
    y, c = center
    want[max(y - 8, 0) : min(y + 8, 32), max(c - 8, 0) : min(c + 8, 32)] = 0
    np.testing.assert_array_equal(out, want)


# ---------------------------------------------------------------------------------------------
# Geometry.


def test_translate_known_input():
    x = _noise(6, 8)
    out = _np(ops.translate_x(_tf(x), 2.0, fill=FILL, interpolation="NEAREST"))
    np.testing.assert_array_equal(out[:, :6], x[:, 2:])
    np.testing.assert_array_equal(out[:, 6:], np.broadcast_to(FILL, (6, 2, 3)))
    out = _np(ops.translate_y(_tf(x), -1.0, fill=FILL, interpolation="NEAREST"))
    np.testing.assert_array_equal(out[1:], x[:-1])
    np.testing.assert_array_equal(out[0], np.broadcast_to(FILL, (8, 3)))


def test_rotate_known_input():
    x = _noise(10, 10)
    out = _np(ops.rotate(_tf(x), 90.0, fill=FILL, interpolation="NEAREST"))
    np.testing.assert_array_equal(out, np.rot90(x, 1))  # counter-clockwise
    # Bilinear lands on pixel centres up to float32 error, which truncation can turn into -1.
    out = _np(ops.rotate(_tf(x), 90.0, fill=FILL, interpolation="BILINEAR"))
    assert np.abs(out - np.rot90(x, 1)).max() <= 1


@pytest.mark.parametrize("pixels", [-14.5, -3.0, 0.5, 5.25, 14.5])
def test_translate_matches_pil(pixels):
    x = _noise()
    im = Image.fromarray(x)
    for interpolation, resample in (("NEAREST", Image.NEAREST), ("BILINEAR", Image.BILINEAR)):
        for op, matrix in (
            (ops.translate_x, (1, 0, pixels, 0, 1, 0)),
            (ops.translate_y, (1, 0, 0, 0, 1, pixels)),
        ):
            want = _ref(im.transform(im.size, Image.AFFINE, matrix, resample, fillcolor=FILL))
            got = _np(op(_tf(x), pixels, fill=FILL, interpolation=interpolation))
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("degrees", [-30.0, 6.67, 17.0])
def test_rotate_matches_pil(degrees):
    x = _noise()
    im = Image.fromarray(x)
    for interpolation, resample in (("NEAREST", Image.NEAREST), ("BILINEAR", Image.BILINEAR)):
        want = _ref(im.rotate(degrees, resample=resample, fillcolor=FILL))
        got = _np(ops.rotate(_tf(x), degrees, fill=FILL, interpolation=interpolation))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("shear", [-0.3, -0.1, 0.2, 0.3])
def test_shear_matches_pil_bilinear(shear):
    x = _noise()
    im = Image.fromarray(x)
    for op, matrix in (
        (ops.shear_x, (1, shear, 0, 0, 1, 0)),
        (ops.shear_y, (1, 0, 0, shear, 1, 0)),
    ):
        want = _ref(im.transform(im.size, Image.AFFINE, matrix, Image.BILINEAR, fillcolor=FILL))
        got = _np(op(_tf(x), shear, fill=FILL))
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
    rng = _rng(1)
    areas = []
    for _ in range(50):
        uniforms = rng.random((10, 4)).astype(np.float32)
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
    uniforms = tf.constant(_rng().random((10, 4)), tf.float32)
    box = ops.random_resized_crop_box(10, 100, uniforms, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3))
    assert tuple(int(v) for v in box) == (0, 43, 10, 13)


@pytest.mark.parametrize("shape", [(20, 25), (40, 50), (120, 90)])
def test_crop_and_resize_matches_pil(shape):
    x = _smooth_image(*shape)
    got = _np(ops.crop_and_resize(_tf(x), (2, 3, shape[0] - 4, shape[1] - 5), 32))
    crop = Image.fromarray(x[2 : shape[0] - 2, 3 : shape[1] - 2])
    want = _ref(crop.resize((32, 32), Image.BILINEAR))
    assert np.abs(got - want).max() <= 1


@pytest.mark.parametrize("shape", [(45, 60), (70, 37), (37, 37)])
def test_resize_center_crop_matches_pil(shape):
    x = _smooth_image(*shape)
    got = _np(ops.resize_shorter_center_crop(_tf(x), 37, 32))
    h, w = shape
    new_h, new_w = (37, int(37 * w / h)) if h <= w else (int(37 * h / w), 37)
    resized = Image.fromarray(x).resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - 32) / 2)), int(round((new_w - 32) / 2))
    want = _ref(resized)[top : top + 32, left : left + 32]
    assert np.abs(got - want).max() <= 1


def test_pad_crop_and_flip_known_input():
    x = _noise(32, 32, lo=1)
    padded = np.pad(x, [(4, 4), (4, 4), (0, 0)])
    windows = {(t, c): padded[t : t + 32, c : c + 32] for t in range(9) for c in range(9)}
    offsets, flips = set(), set()
    for i in range(60):
        seed = tf.constant([i, 1], tf.int64)
        crop = _np(augment._pad_crop(_tf(x), seed, 32, 4))
        offsets.add(next(k for k, w in windows.items() if np.array_equal(w, crop)))
        flipped = _np(augment._flip(_tf(x), seed))
        assert np.array_equal(flipped, x) or np.array_equal(flipped, x[:, ::-1])
        flips.add(np.array_equal(flipped, x))
    assert {t for t, _ in offsets} >= {0, 8} and {c for _, c in offsets} >= {0, 8}
    assert flips == {True, False}


# ---------------------------------------------------------------------------------------------
# Policies: tables, and every op against a PIL statement of the official implementation.


def test_cifar10_policy_table():
    assert len(augment.CIFAR10_POLICY) == 25
    for sub in augment.CIFAR10_POLICY:
        assert len(sub) == 2
        for op, p, m in sub:
            assert op in augment.AUTOAUGMENT_OPS and 0.0 <= p <= 1.0 and 0 <= m <= 9
    assert augment.autoaugment_magnitude("posterize", 7) == 5.0
    assert augment.autoaugment_magnitude("posterize", 0) == 8.0
    assert augment.autoaugment_magnitude("solarize", 2) == pytest.approx(256 * 7 / 9)
    assert augment.autoaugment_magnitude("translateX", 9) == pytest.approx(150 / 331)
    assert augment.autoaugment_magnitude("rotate", 2) == pytest.approx(30 * 2 / 9)
    assert augment.autoaugment_magnitude("color", 9) == pytest.approx(0.9)
    assert augment.autoaugment_magnitude("equalize", 4) == 0.0


def _official_autoaugment(im: Image.Image, op: str, m: float, sign: int) -> Image.Image:
    """The official autoaug.py ops, restated with PIL (shear resampled bilinearly, not bicubic)."""
    gray = (128, 128, 128)
    w, h = im.size
    affine = {
        "shearX": ((1, m * sign, 0, 0, 1, 0), Image.BILINEAR),
        "shearY": ((1, 0, 0, m * sign, 1, 0), Image.BILINEAR),
        "translateX": ((1, 0, m * w * sign, 0, 1, 0), Image.NEAREST),
        "translateY": ((1, 0, 0, 0, 1, m * h * sign), Image.NEAREST),
    }
    if op in affine:
        matrix, resample = affine[op]
        return im.transform(im.size, Image.AFFINE, matrix, resample, fillcolor=gray)
    enhancers = {
        "color": ImageEnhance.Color,
        "contrast": ImageEnhance.Contrast,
        "sharpness": ImageEnhance.Sharpness,
        "brightness": ImageEnhance.Brightness,
    }
    if op in enhancers:
        return enhancers[op](im).enhance(1 + m * sign)
    return {
        "rotate": lambda: im.rotate(m, fillcolor=gray),
        "posterize": lambda: ImageOps.posterize(im, int(m)),
        "solarize": lambda: ImageOps.solarize(im, m),
        "autocontrast": lambda: ImageOps.autocontrast(im),
        "equalize": lambda: ImageOps.equalize(im),
        "invert": lambda: ImageOps.invert(im),
    }[op]()


@pytest.mark.parametrize("sign", [-1, 1])
def test_autoaugment_ops_match_official(sign):
    x = _noise(32, 32, lo=20, hi=230)
    im = Image.fromarray(x)
    for index, op in enumerate(augment.AUTOAUGMENT_OPS):
        m = augment.autoaugment_magnitude(op, 7)
        got = _np(augment.autoaugment_op(_tf(x), index, m, float(sign)))
        want = _ref(_official_autoaugment(im, op, m, sign))
        tolerance = 1 if op.startswith("shear") else 0
        assert np.abs(got - want).max() <= tolerance, op
    identity = augment.autoaugment_op(_tf(x), len(augment.AUTOAUGMENT_OPS), 0.0, 1.0)
    np.testing.assert_array_equal(_np(identity), x)


def _timm_rand_augment(im: Image.Image, op: str, level: float, sign: int) -> Image.Image:
    """timm's rand-augment ops (the official randaugment.py), restated with PIL, bilinear."""
    frac = level / 10
    w, h = im.size
    geometric = {
        "ShearX": (1, frac * 0.3 * sign, 0, 0, 1, 0),
        "ShearY": (1, 0, 0, frac * 0.3 * sign, 1, 0),
        "TranslateXRel": (1, 0, frac * 0.45 * sign * w, 0, 1, 0),
        "TranslateYRel": (1, 0, 0, 0, 1, frac * 0.45 * sign * h),
    }
    if op in geometric:
        return im.transform(im.size, Image.AFFINE, geometric[op], Image.BILINEAR, fillcolor=FILL)
    enhancers = {
        "Color": ImageEnhance.Color,
        "Contrast": ImageEnhance.Contrast,
        "Brightness": ImageEnhance.Brightness,
        "Sharpness": ImageEnhance.Sharpness,
    }
    if op in enhancers:
        return enhancers[op](im).enhance(frac * 1.8 + 0.1)
    add = int(frac * 110)
    solarize_add_lut = [min(255, i + add) if i < 128 else i for i in range(256)] * 3
    return {
        "AutoContrast": lambda: ImageOps.autocontrast(im),
        "Equalize": lambda: ImageOps.equalize(im),
        "Invert": lambda: ImageOps.invert(im),
        "Rotate": lambda: im.rotate(frac * 30 * sign, resample=Image.BILINEAR, fillcolor=FILL),
        "PosterizeTpu": lambda: ImageOps.posterize(im, int(frac * 4)),
        "Solarize": lambda: ImageOps.solarize(im, int(frac * 256)),
        "SolarizeAdd": lambda: im.point(solarize_add_lut),
    }[op]()


@pytest.mark.parametrize("level,sign", [(7.7, -1), (10.0, 1)])
def test_rand_augment_ops_match_timm(level, sign):
    x = _noise(32, 32, lo=20, hi=230)
    im = Image.fromarray(x)
    for index, op in enumerate(augment.RAND_AUGMENT_OPS):
        got = _np(augment.rand_augment_op(_tf(x), index, level, float(sign), fill=FILL))
        want = _ref(_timm_rand_augment(im, op, level, sign))
        tolerance = 1 if op in ("ShearX", "ShearY", "TranslateXRel", "TranslateYRel") else 0
        assert np.abs(got - want).max() <= tolerance, op


def _map_seeds(fn, image: np.ndarray, num_seeds: int) -> np.ndarray:
    """fn(image, seed) for seeds [0, i], i < num_seeds, computed in a tf.data map."""
    ds = tf.data.Dataset.range(num_seeds).map(
        lambda i: fn(tf.constant(image), tf.stack([tf.constant(0, tf.int64), i])),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return np.stack(list(ds.batch(num_seeds).as_numpy_iterator())[0])


def test_rand_augment_application_rate():
    # Each of the 2 layers is skipped with p=0.5; Solarize (threshold >= 243) leaves this
    # [20, 230) image unchanged, so P(unchanged) = (0.5 + 0.5 / 15) ** 2 = 0.284.
    x = _noise(16, 16, lo=20, hi=230).astype(np.float32)
    outs = _map_seeds(lambda im, s: augment.rand_augment(im, s, fill=FILL), x, 300)
    unchanged = np.mean([np.array_equal(o, x) for o in outs])
    assert 0.2 <= unchanged <= 0.37, unchanged


def test_color_jitter_factor_range_and_identity():
    x = _smooth_image(16, 16).astype(np.float32)

    def jitter(strength):
        return lambda im, s: augment.color_jitter(
            im, s, brightness=strength, contrast=0.0, saturation=0.0, hue=0.0
        )

    # Brightness alone scales the image by a factor ~ U[0.6, 1.4] (up to 8-bit truncation).
    ratios = _map_seeds(jitter(0.4), x, 40).sum(axis=(1, 2, 3)) / x.sum()
    assert ratios.min() >= 0.59 and ratios.max() <= 1.41
    assert ratios.min() < 0.8 and ratios.max() > 1.2
    np.testing.assert_array_equal(_map_seeds(jitter(0.0), x, 3)[2], x)


# ---------------------------------------------------------------------------------------------
# Views.

_VIEW_INPUTS = {
    "cifar_autoaugment": (32, 32),
    "cifar_randaugment": (32, 32),
    "moco_cifar": (32, 32),
    "cifar_test": (32, 32),
    "imagenet_randaugment": (48, 40),
    "places_sim": (40, 52),
    "resize_center_crop": (45, 60),
}
_SEEDLESS = ("cifar_test", "resize_center_crop")


def test_views_and_normalization_constants():
    assert set(augment.VIEWS) == set(_VIEW_INPUTS)
    assert augment.NORMALIZATION["cifar"] == ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
    assert augment.NORMALIZATION["imagenet"] == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert augment.NORMALIZATION["inat"] == ((0.466, 0.471, 0.380), (0.195, 0.194, 0.192))


def test_make_view_rejects_unknown_names():
    with pytest.raises(ValueError, match="cifar_autoaugment"):
        augment.make_view("autoaugment", image_size=32, normalization="cifar")
    with pytest.raises(ValueError, match="imagenet"):
        augment.make_view("cifar_test", image_size=32, normalization="places")


@pytest.mark.parametrize("name", sorted(_VIEW_INPUTS))
def test_view_shape_range_and_determinism(name):
    normalization = "inat" if name == "places_sim" else "cifar"
    view = augment.make_view(name, image_size=32, normalization=normalization)
    image = tf.constant(_smooth_image(*_VIEW_INPUTS[name]))
    seed = tf.constant([3, 11], tf.int64)
    out = view(image, seed).numpy()
    assert out.shape == (32, 32, 3) and out.dtype == np.float32
    mean, std = (np.array(v) for v in augment.NORMALIZATION[normalization])
    assert np.all(out >= -mean / std - 1e-5) and np.all(out <= (1 - mean) / std + 1e-5)
    pixels = (out * std + mean) * 255.0
    np.testing.assert_allclose(pixels, np.round(pixels), atol=2e-3)  # still on the 8-bit grid
    np.testing.assert_array_equal(view(image, seed).numpy(), out)
    np.testing.assert_array_equal(view(image, tf.constant([3, 11], tf.int32)).numpy(), out)
    signature = [tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int64)]
    traced = tf.function(view, input_signature=signature)  # graph mode, unknown image size
    np.testing.assert_array_equal(traced(image, seed).numpy(), out)
    other = view(image, tf.constant([3, 12], tf.int64)).numpy()
    if name in _SEEDLESS:
        np.testing.assert_array_equal(other, out)
    else:
        assert not np.array_equal(other, out)


def test_fixed_views_are_plain_normalization():
    x = _smooth_image(32, 32)
    out = augment.make_view("cifar_test", image_size=32, normalization="cifar")(x, [0, 0])
    mean, std = (np.array(v) for v in augment.NORMALIZATION["cifar"])
    np.testing.assert_allclose(out.numpy(), (x / 255.0 - mean) / std, atol=1e-5)
    view = augment.make_view("resize_center_crop", image_size=224, normalization="imagenet")
    assert view(_smooth_image(300, 400), [0, 0]).shape == (224, 224, 3)


def test_views_inside_tf_data_match_eager_calls():
    images = {name: _smooth_image(*shape, seed=1) for name, shape in _VIEW_INPUTS.items()}
    views = {n: augment.make_view(n, image_size=32, normalization="cifar") for n in images}

    def apply_all(i):
        seed = tf.stack([tf.constant(5, tf.int64), i])
        return {name: views[name](tf.constant(images[name]), seed) for name in views}

    ds = tf.data.Dataset.range(4).map(
        apply_all, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    first = list(ds.as_numpy_iterator())
    second = list(ds.as_numpy_iterator())
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        for name in views:
            np.testing.assert_array_equal(a[name], b[name])
            eager = views[name](images[name], tf.constant([5, i], tf.int64)).numpy()
            np.testing.assert_array_equal(a[name], eager)


def test_two_views_of_one_image_differ():
    image = _smooth_image(32, 32)
    query = augment.make_view("cifar_autoaugment", image_size=32, normalization="cifar")
    key = augment.make_view("moco_cifar", image_size=32, normalization="cifar")
    seeds = tf.random.experimental.stateless_split(tf.constant([1, 2], tf.int64), 2)
    assert not np.array_equal(query(image, seeds[0]).numpy(), key(image, seeds[1]).numpy())
    assert not np.array_equal(query(image, seeds[0]).numpy(), query(image, seeds[1]).numpy())
