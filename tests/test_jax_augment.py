"""The JAX views (ncl_jax.data.jax_augment): the policies' random choices against their
distributions, ColorJitter's composition, and every view's output: shape, normalisation (equal
to the TF view's), determinism per key, jit, and what each view may do to an image."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from ncl_jax.data import augment, jax_augment
from ncl_jax.data import augment_tables as tables
from ncl_jax.data import jax_augment_ops as ops
from ncl_jax.data.normalization import NORMALIZATION
from ncl_jax.perf.jax_augment_check import check_images

IMAGES = check_images(8, 32)


def _keys(n: int, seed: int = 0) -> jax.Array:
    return jax.random.split(jax.random.key(seed), n)


def _pixels(out: np.ndarray) -> np.ndarray:
    """Undo the cifar normalisation: the 8-bit levels a view produced (asserted integral)."""
    mean, std = (np.asarray(v) for v in NORMALIZATION["cifar"])
    pixels = (out.astype(np.float64) * std + mean) * 255.0
    np.testing.assert_allclose(pixels, np.round(pixels), atol=1e-3)
    return np.round(pixels).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The policies' random choices.


def test_autoaugment_draws_follow_the_policy_table():
    n = 5000
    policy, index, magnitude, sign = (
        np.asarray(a) for a in jax.vmap(jax_augment.autoaugment_draws)(_keys(n))
    )
    counts = np.bincount(policy, minlength=25)
    assert counts.size == 25 and counts.min() > 0.7 * n / 25 and counts.max() < 1.3 * n / 25
    op_ids, probs, magnitudes = tables.cifar10_policy_arrays()
    fired = index != len(tables.AUTOAUGMENT_OPS)
    np.testing.assert_array_equal(index[fired], op_ids[policy][fired])
    np.testing.assert_array_equal(magnitude, magnitudes[policy])
    for k in range(2):  # each slot fires with its table probability, over all sub-policies
        for p in np.unique(probs[:, k]):
            rows = probs[policy, k] == p
            assert abs(fired[rows, k].mean() - p) < 0.1, (k, p)
    assert abs(fired.mean() - probs.mean()) < 0.02
    assert set(np.unique(sign)) == {-1.0, 1.0} and abs((sign > 0).mean() - 0.5) < 0.03


def test_rand_augment_draws_distribution():
    n = 5000
    index, level, sign = (np.asarray(a) for a in jax.vmap(jax_augment.rand_augment_draws)(_keys(n)))
    num_ops = len(tables.RAND_AUGMENT_OPS)
    assert index.shape == (n, tables.RAND_AUGMENT_LAYERS)
    counts = np.bincount(index.ravel(), minlength=num_ops + 1) / index.size
    assert abs(counts[num_ops] - 0.5) < 0.03  # each layer skipped with p = 0.5
    np.testing.assert_allclose(counts[:num_ops], 0.5 / num_ops, atol=0.01)
    # levels ~ N(10, 0.5) clipped to [0, 10]: half exactly 10, mean 10 - 0.5 / sqrt(2 pi).
    assert level.min() >= 0.0 and level.max() == 10.0
    assert abs((level == 10.0).mean() - 0.5) < 0.03
    assert abs(level.mean() - (10.0 - 0.5 / np.sqrt(2 * np.pi))) < 0.02
    assert abs((sign > 0).mean() - 0.5) < 0.03


def _jitter_by_hand(x: jax.Array, u: np.ndarray) -> jax.Array:
    """torchvision's ColorJitter(0.4, 0.4, 0.4, 0.1) from its 8 uniforms, written out."""
    steps = [
        lambda i: ops.adjust_brightness(i, 0.6 + 0.8 * u[0]),
        lambda i: ops.adjust_contrast(i, 0.6 + 0.8 * u[1]),
        lambda i: ops.adjust_color(i, 0.6 + 0.8 * u[2]),
        lambda i: ops.adjust_hue(i, 0.1 * (2.0 * u[3] - 1.0)),
    ]
    for position in np.argsort(u[4:]):
        x = steps[position](x)
    return x


def test_color_jitter_applies_the_four_adjustments_in_the_drawn_order():
    assert tables.MOCO_JITTER == dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    x = jnp.asarray(IMAGES[1], jnp.float32)
    for seed in range(3):
        key = jax.random.key(seed)
        want = _jitter_by_hand(x, np.asarray(jax.random.uniform(key, (8,))))
        got = jax_augment.color_jitter(x, key, **tables.MOCO_JITTER)
        # Within one level: compiled inside lax.switch, XLA may fuse a blend's multiply-add.
        assert np.abs(np.asarray(got) - np.asarray(want)).max() <= 1.0


# ---------------------------------------------------------------------------------------------
# apply_view.


def test_jax_views_are_the_cifar_views():
    assert set(jax_augment.JAX_VIEWS) <= set(augment.VIEWS)
    assert {"cifar_autoaugment", "cifar_randaugment", "cifar_standard", "moco_cifar"} <= set(
        jax_augment.JAX_VIEWS
    )


def test_apply_view_rejects_bad_input():
    images, keys = jnp.asarray(IMAGES), _keys(8)
    with pytest.raises(ValueError, match="no JAX version of view 'places_sim'"):
        jax_augment.apply_view("places_sim", images, keys)
    with pytest.raises(ValueError, match="unknown normalization"):
        jax_augment.apply_view("cifar_test", images, keys, normalization="mnist")
    with pytest.raises(ValueError, match="uint8"):
        jax_augment.apply_view("cifar_test", images.astype(jnp.float32), keys)
    with pytest.raises(ValueError, match="square"):
        jax_augment.apply_view("cifar_test", images[:, :, :16], keys)


def test_test_view_equals_the_tf_view_bit_for_bit():
    view = augment.make_view("cifar_test", image_size=32, normalization="cifar")
    want = np.stack([np.asarray(view(tf.constant(x), tf.constant([0, 0]))) for x in IMAGES])
    fn = jax.jit(lambda x, k: jax_augment.apply_view("cifar_test", x, k))
    got = np.asarray(fn(jnp.asarray(IMAGES), _keys(8)))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)


def _check_view(name: str, images: np.ndarray) -> np.ndarray:
    """Shape, dtype, 8-bit levels, determinism per key and jit == eager; returns pixels."""
    keys = _keys(images.shape[0])
    fn = jax.jit(lambda x, k: jax_augment.apply_view(name, x, k))
    out = np.asarray(fn(jnp.asarray(images), keys))
    assert out.shape == images.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.asarray(fn(jnp.asarray(images), keys)))
    other = np.asarray(fn(jnp.asarray(images), _keys(images.shape[0], seed=1)))
    assert not np.array_equal(out, other)
    # Each example depends on its own key only: the first image alone, same key, same output.
    alone = np.asarray(fn(jnp.asarray(images[:1]), keys[:1]))
    np.testing.assert_array_equal(alone[0], out[0])
    return _pixels(out)


def test_standard_view_is_a_padded_crop_of_the_image_or_its_mirror():
    pixels = _check_view("cifar_standard", IMAGES)
    for x, y in zip(IMAGES, pixels, strict=True):
        found = False
        for image in (x, x[:, ::-1]):
            padded = np.pad(image.astype(np.int64), ((4, 4), (4, 4), (0, 0)))
            windows = [padded[r : r + 32, c : c + 32] for r in range(9) for c in range(9)]
            found |= any(np.array_equal(w, y) for w in windows)
        assert found


def test_batching_follows_the_platform_and_both_batchings_draw_the_same_pixels():
    assert jax_augment.resolve_batching("auto", "cpu") == "map"
    assert jax_augment.resolve_batching("auto", "gpu") == "vmap"
    assert jax_augment.resolve_batching("auto", "tpu") == "vmap"
    assert jax_augment.resolve_batching("vmap", "cpu") == "vmap"
    with pytest.raises(ValueError, match="unknown batching 'scan'"):
        jax_augment.resolve_batching("scan")
    # Same keys, same draws: the standard view (no warps) is equal bit for bit either way.
    images, keys = jnp.asarray(IMAGES), _keys(8)
    outs = [
        np.asarray(
            jax.jit(lambda x, k, b=b: jax_augment.apply_view("cifar_standard", x, k, batching=b))(
                images, keys
            )
        )
        for b in ("map", "vmap")
    ]
    np.testing.assert_array_equal(*outs)


def test_raw_uint32_keys_act_as_their_typed_keys():
    raw = jax.random.split(jax.random.PRNGKey(3), 8)  # [8, 2] uint32
    fn = jax.jit(lambda x, k: jax_augment.apply_view("cifar_standard", x, k))
    got = np.asarray(fn(jnp.asarray(IMAGES), raw))
    want = np.asarray(fn(jnp.asarray(IMAGES), jax.random.wrap_key_data(raw)))
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow  # fast tier under 2 min: heavy compile or a real dataset
def test_moco_view_is_gray_one_time_in_five():
    image = np.repeat(IMAGES[1:2], 800, axis=0)[:, :16, :16]  # a colourful 16x16 image
    pixels = _check_view("moco_cifar", image)
    gray = np.all(pixels == pixels[..., :1], axis=(1, 2, 3))
    assert abs(gray.mean() - tables.MOCO_GRAY_P) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cifar_autoaugment", "cifar_randaugment"])
def test_policy_views_cut_out_a_hole(name):
    pixels = _check_view(name, IMAGES)
    black = np.all(pixels == 0, axis=-1).sum(axis=(1, 2))
    assert np.all(black >= 8 * 8)  # the 16x16 hole, clipped to at least a corner's 8x8


@pytest.mark.slow
def test_jax_augment_imports_no_tensorflow():
    code = (
        "import sys; import ncl_jax.data.jax_augment; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_ablation_views_leave_out_one_step_and_keep_the_others_draws():
    # As the TF views (tests/test_augment.py): no_cutout is the paper view but the hole;
    # cifar_cutout is a crop of the image or its mirror with a black hole and no policy.
    images, keys = IMAGES[:4], _keys(4, seed=3)
    view = jax.jit(jax_augment.apply_view, static_argnums=0)
    full, no_cutout, cutout = (
        _pixels(np.asarray(view(n, images, keys)))
        for n in ("cifar_randaugment", "cifar_randaugment_no_cutout", "cifar_cutout")
    )
    length = tables.CUTOUT_LENGTH
    for i, image in enumerate(images):
        changed = np.any(full[i] != no_cutout[i], axis=-1)
        rows, cols = np.nonzero(changed)
        assert rows.size >= 8 * 8 and np.ptp(rows) < length and np.ptp(cols) < length
        assert np.all(full[i][changed] == 0)
        black = np.all(cutout[i] == 0, axis=-1)
        assert black.sum() >= 8 * 8
        padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
        windows = [
            im[y : y + 32, x : x + 32] for im in (padded, padded[:, ::-1]) for y in range(9)
            for x in range(9)
        ]  # fmt: skip
        assert any(np.array_equal(cutout[i][~black], w[~black]) for w in windows)
