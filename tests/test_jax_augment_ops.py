"""Each JAX image op of ncl_jax.data.jax_augment_ops against its TF op in augment_ops (same
image, same parameters; equal, or within the stated number of levels), and the random crop,
flip and Cutout draws against their distributions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageOps

from ncl_jax.data import augment_ops, jax_augment
from ncl_jax.data import augment_tables as tables
from ncl_jax.data import jax_augment_ops as ops
from ncl_jax.perf import jax_augment_check as check
from tests.augment_helpers import as_np, as_tf

IMAGES = check.check_images(8, 32)


@pytest.mark.parametrize("case", check.OP_CASES, ids=[c[0] for c in check.OP_CASES])
def test_op_matches_tf_op(case):
    name, fn, bound = case
    want = np.stack([as_np(fn(augment_ops, as_tf(x))) for x in IMAGES])
    got = check.jax_ops(lambda x: fn(ops, x), IMAGES)  # batched as apply_view on this platform
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, np.round(got))  # 8-bit values, as the TF ops keep them
    assert np.abs(got - want).max() <= bound, name


@pytest.mark.slow  # fast tier under 2 min: heavy compile or a real dataset
def test_policy_branches_match_tf_policy_ops():
    images = IMAGES[:2]  # one noise, one smooth image; the full set runs in jax_augment_check
    for name, tf_fn, jax_fn, bound in check.policy_cases(images.shape[1:]):
        want = np.stack([as_np(tf_fn(as_tf(x))) for x in images])
        got = check.jax_ops(jax_fn, images)
        assert np.abs(got - want).max() <= bound, name


def test_blend_rounds_as_pil_for_every_pair_of_levels_when_jitted():
    # PIL/TF: floor(d + fl(f * (x - d))) in float32, two roundings; compiled, XLA would fuse
    # them into one FMA unless the op prevents it. All 65,536 (d, x) pairs, factors of the
    # policies and random ones.
    d = np.repeat(np.arange(256, dtype=np.float32), 256)
    x = np.tile(np.arange(256, dtype=np.float32), 256)
    blend = jax.jit(ops.blend)
    factors = np.float32([0.1, 0.3, 1.0 + 0.9 * 7 / 9, 1.9, 0.6 + 0.8 * 0.37])
    for f in np.concatenate([factors, np.random.default_rng(0).uniform(0, 2, 20)]):
        f = np.float32(f)
        want = np.clip(np.floor(d + (f * (x - d)).astype(np.float32)), 0, 255)
        np.testing.assert_array_equal(np.asarray(blend(d, x, f)), want, err_msg=str(f))


def test_autocontrast_matches_pil_where_float64_rounds_down():
    # Inputs where PIL's float64 formula int(i * 255 / (hi - lo) - lo * 255 / (hi - lo)) lands
    # one level below the exact quotient: the JAX op must reproduce PIL there too.
    misses = ops._autocontrast_float64_misses()
    lo, hi, level = misses // 65536, misses // 256 % 256, misses % 256
    for k in np.random.default_rng(0).choice(misses.size, 6, replace=False):
        span = hi[k] - lo[k]
        exact = (level[k] - lo[k]) * 255 // span
        pil_value = int(level[k] * (255.0 / span) + (-lo[k] * (255.0 / span)))
        assert pil_value == exact - 1
        x = np.full((4, 4, 3), lo[k], np.uint8)
        x[0, 0] = hi[k]
        x[1, 1] = level[k]
        want = np.asarray(ImageOps.autocontrast(Image.fromarray(x)), np.int64)
        got = np.asarray(ops.autocontrast(jnp.asarray(x, jnp.float32))).astype(np.int64)
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(got, as_np(augment_ops.autocontrast(as_tf(x))))
        assert got[1, 1, 0] == exact - 1


def test_random_resized_crop_box_matches_tf():
    rng = np.random.default_rng(0)
    uniforms = rng.random((64, 10, 4), dtype=np.float32)
    uniforms[:4, :, :2] = 1.0 - 1e-7  # every attempt too large: the centre-crop fallback
    kw = dict(scale=tables.MOCO_CROP_SCALE, ratio=tables.CROP_RATIO)
    for height, width in ((32, 32), (24, 40)):
        draw = functools.partial(ops.random_resized_crop_box, height, width, **kw)
        box = jax.vmap(draw)(uniforms)
        got = np.stack([np.asarray(b) for b in box], axis=1)
        want = np.array(
            [[int(v) for v in augment_ops.random_resized_crop_box(height, width, u, **kw)]
             for u in uniforms]
        )  # fmt: skip
        np.testing.assert_array_equal(got, want)
    assert got[0].tolist() != got[5].tolist()


def test_pad_crop_offsets_are_uniform_windows_of_the_padded_image():
    x = np.arange(1, 8 * 8 * 3 + 1, dtype=np.float32).reshape(8, 8, 3)
    padded = np.pad(x, ((4, 4), (4, 4), (0, 0)))
    keys = jax.random.split(jax.random.key(0), 2700)
    out = np.asarray(jax.vmap(lambda k: ops.pad_crop(jnp.asarray(x), k, 8, 4))(keys))
    windows = np.stack([padded[r : r + 8, c : c + 8] for r in range(9) for c in range(9)])
    match = np.all(out[:, None] == windows[None], axis=(2, 3, 4))
    assert np.all(match.sum(axis=1) == 1)  # each output is exactly one of the 81 windows
    offset = match.argmax(axis=1)
    for axis_offset in (offset // 9, offset % 9):  # rows and columns: uniform over 0..8
        counts = np.bincount(axis_offset, minlength=9)
        assert counts.size == 9 and counts.min() > 0.75 * 300 and counts.max() < 1.25 * 300


def test_flip_probability_is_one_half():
    x = jnp.asarray(np.arange(2 * 4 * 3, dtype=np.float32).reshape(2, 4, 3))
    keys = jax.random.split(jax.random.key(1), 4000)
    out = np.asarray(jax.vmap(lambda k: ops.random_flip(x, k))(keys))
    flipped = np.all(out == np.asarray(x)[:, ::-1], axis=(1, 2, 3))
    assert np.all(flipped | np.all(out == np.asarray(x), axis=(1, 2, 3)))
    assert 0.46 < flipped.mean() < 0.54


def test_cutout_center_is_uniform_over_the_image():
    keys = jax.random.split(jax.random.key(2), 4000)
    rows, cols = (np.asarray(c) for c in jax.vmap(lambda k: jax_augment.cutout_center(k, 32))(keys))
    for values in (rows, cols):
        counts = np.bincount(values, minlength=32)
        assert values.min() == 0 and values.max() == 31 and counts.size == 32
        assert counts.min() > 0.5 * 4000 / 32 and counts.max() < 1.5 * 4000 / 32


def test_cutout_box_clipped_at_the_border():
    x = jnp.ones((32, 32, 3), jnp.float32)
    out = np.asarray(ops.cutout(x, jnp.int32(2), jnp.int32(31), tables.CUTOUT_LENGTH))
    want = np.ones((32, 32, 3), np.float32)
    want[0:10, 23:32] = 0.0  # rows [2 - 8, 2 + 8) and columns [31 - 8, 31 + 8), clipped
    np.testing.assert_array_equal(out, want)


def test_ops_jit_with_traced_parameters():
    # Parameters arrive as traced values inside the views; jit must give the eager result.
    fn = jax.jit(
        lambda x, bits, degrees: ops.rotate(ops.posterize(x, bits), degrees, fill=(0,) * 3)
    )
    x = jnp.asarray(IMAGES[0], jnp.float32)
    want = ops.rotate(ops.posterize(x, 4), 10.0, fill=(0,) * 3)
    np.testing.assert_array_equal(np.asarray(fn(x, 4, 10.0)), np.asarray(want))


def test_view_statistics_of_the_test_view_are_equal_through_both_implementations():
    images = check.check_images(8, 32)
    stats = check.view_statistics("cifar_test", images, seed=7)
    assert stats["tf"] == stats["jax"]  # the test view is equal bit for bit
    assert stats["tf"]["mean"] == pytest.approx(images.mean())
    assert 0.0 <= stats["tf"]["black"] <= 1.0 and 0.0 <= stats["tf"]["gray_fill"] <= 1.0


@pytest.mark.slow  # fast tier under 2 min: compiles both RandAugment chains
def test_chained_rand_augment_layers_match_tf_with_the_same_draws():
    # One op's rounding must not grow through the next (e.g. a bilinear shear's last-level
    # differences through equalize's lookup table): 32 images, two layers with drawn ops.
    chains = check.chain_agreement(IMAGES.repeat(4, axis=0), seed=1)
    assert chains["images"] == 32
    assert chains["over_one"] <= 1 and chains["max"] <= 3, chains["pairs"]
    assert abs(chains["mean_tf"] - chains["mean_jax"]) < 0.01
