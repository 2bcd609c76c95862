"""Augmentation policies (AutoAugment CIFAR10Policy, RandAugment, ColorJitter) against PIL
statements of the official ops, and every view: shape, range, determinism, use in tf.data."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageEnhance, ImageOps

from ncl_jax.data import augment
from ncl_jax.data import augment_tables as tables
from tests.augment_helpers import FILL, as_np, as_tf, noise, pil, smooth_image

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
    x = noise(32, 32, lo=20, hi=230)
    im = Image.fromarray(x)
    for index, op in enumerate(augment.AUTOAUGMENT_OPS):
        m = augment.autoaugment_magnitude(op, 7)
        got = as_np(augment.autoaugment_op(as_tf(x), index, m, float(sign)))
        want = pil(_official_autoaugment(im, op, m, sign))
        tolerance = 1 if op.startswith("shear") else 0
        assert np.abs(got - want).max() <= tolerance, op
    identity = augment.autoaugment_op(as_tf(x), len(augment.AUTOAUGMENT_OPS), 0.0, 1.0)
    np.testing.assert_array_equal(as_np(identity), x)


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
    x = noise(32, 32, lo=20, hi=230)
    im = Image.fromarray(x)
    for index, op in enumerate(augment.RAND_AUGMENT_OPS):
        got = as_np(augment.rand_augment_op(as_tf(x), index, level, float(sign), fill=FILL))
        want = pil(_timm_rand_augment(im, op, level, sign))
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
    x = noise(16, 16, lo=20, hi=230).astype(np.float32)
    outs = _map_seeds(lambda im, s: augment.rand_augment(im, s, fill=FILL), x, 300)
    unchanged = np.mean([np.array_equal(o, x) for o in outs])
    assert 0.2 <= unchanged <= 0.37, unchanged


def test_color_jitter_factor_range_and_identity():
    x = smooth_image(16, 16).astype(np.float32)

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
    "cifar_standard": (32, 32),
    "cifar_randaugment_no_cutout": (32, 32),
    "cifar_cutout": (32, 32),
    "moco_cifar": (32, 32),
    "cifar_test": (32, 32),
    "imagenet_randaugment": (48, 40),
    "places_sim": (40, 52),
    "resize_center_crop": (45, 60),
}
_SEEDLESS = ("cifar_test", "resize_center_crop")


def test_views_and_normalization_constants():
    assert set(augment.VIEWS) == set(_VIEW_INPUTS)
    # the names config validation checks (data/choices.py) are exactly the implemented ones
    assert tuple(augment._VIEW_FNS) == augment.VIEWS
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
    image = tf.constant(smooth_image(*_VIEW_INPUTS[name]))
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
    x = smooth_image(32, 32)
    out = augment.make_view("cifar_test", image_size=32, normalization="cifar")(x, [0, 0])
    mean, std = (np.array(v) for v in augment.NORMALIZATION["cifar"])
    np.testing.assert_allclose(out.numpy(), (x / 255.0 - mean) / std, atol=1e-5)
    view = augment.make_view("resize_center_crop", image_size=224, normalization="imagenet")
    assert view(smooth_image(300, 400), [0, 0]).shape == (224, 224, 3)


@pytest.mark.slow  # fast tier under 2 min: heavy compile or a real dataset
def test_views_inside_tf_data_match_eager_calls():
    images = {name: smooth_image(*shape, seed=1) for name, shape in _VIEW_INPUTS.items()}
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
    image = smooth_image(32, 32)
    query = augment.make_view("cifar_autoaugment", image_size=32, normalization="cifar")
    key = augment.make_view("moco_cifar", image_size=32, normalization="cifar")
    seeds = tf.random.experimental.stateless_split(tf.constant([1, 2], tf.int64), 2)
    assert not np.array_equal(query(image, seeds[0]).numpy(), key(image, seeds[1]).numpy())
    assert not np.array_equal(query(image, seeds[0]).numpy(), query(image, seeds[1]).numpy())


def test_cifar_standard_view_is_a_padded_crop_of_the_flipped_or_original_image():
    """Table 4's "w/o RandAug": every output is a 32x32 window of the zero-padded image or of
    its mirror, with no other change."""
    view = augment.make_view("cifar_standard", image_size=32, normalization="cifar")
    mean, std = (np.array(v) for v in augment.NORMALIZATION["cifar"])
    image = smooth_image(32, 32)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    for seed in range(5):
        out = view(tf.constant(image), tf.constant([seed, 1], tf.int64)).numpy()
        pixels = np.round((out * std + mean) * 255.0)
        windows = [
            src[i : i + 32, j : j + 32]
            for src in (padded, padded[:, ::-1])
            for i in range(9)
            for j in range(9)
        ]
        assert any(np.array_equal(pixels, w) for w in windows), seed


def _hole(full: np.ndarray, without: np.ndarray) -> np.ndarray:
    """Where a view's output and the same view without Cutout differ (bool [H, W])."""
    return np.any(full != without, axis=-1)


def _fits_a_cutout_box(changed: np.ndarray) -> bool:
    rows, cols = np.nonzero(changed)
    length = tables.CUTOUT_LENGTH
    return rows.size == 0 or (np.ptp(rows) < length and np.ptp(cols) < length)


def test_the_ablation_views_leave_out_one_step_and_keep_the_others_draws():
    # cifar_randaugment_no_cutout: the paper view's pixels but the hole; cifar_cutout: a hole
    # (zero pixels) in a crop of the image or its mirror, no policy.
    full, no_cutout, cutout = (
        augment.make_view(n, image_size=32, normalization="cifar")
        for n in ("cifar_randaugment", "cifar_randaugment_no_cutout", "cifar_cutout")
    )
    mean, std = (np.array(v) for v in augment.NORMALIZATION["cifar"])
    image = smooth_image(32, 32)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    windows = [
        im[y : y + 32, x : x + 32] for im in (padded, padded[:, ::-1]) for y in range(9)
        for x in range(9)
    ]  # fmt: skip
    holes = 0
    for seed in range(6):
        s = tf.constant([seed, 3], tf.int64)
        a, b = full(image, s).numpy(), no_cutout(image, s).numpy()
        changed = _hole(a, b)  # empty only where the hole falls on black pixels
        holes += int(changed.sum() >= 8 * 8)
        assert _fits_a_cutout_box(changed)
        np.testing.assert_allclose(a[changed], np.broadcast_to(-mean / std, a.shape)[changed])
        pixels = np.round((cutout(image, s).numpy() * std + mean) * 255.0)
        black = np.all(pixels == 0, axis=-1)
        assert black.sum() >= 8 * 8
        assert any(np.array_equal(pixels[~black], w[~black]) for w in windows)
    assert holes >= 4
