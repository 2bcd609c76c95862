"""How closely the JAX augmentation ops match the TF ops, and how fast the JAX views run.

Agreement: every op of `jax_augment_ops` (and every AutoAugment / RandAugment branch of
`jax_augment`) against its TF op in `augment_ops` / `augment`, on the same images with the same
parameters: the largest difference in 8-bit levels and the fraction of pixel values that
differ. `OP_CASES` is also what tests/test_jax_augment_ops.py holds to each case's bound.
Chains: RandAugment's two layers as a view applies them (op after op, each at its drawn level
and sign), through both implementations with the same draws, on real CIFAR images
(`--chain_images`): how often the chained outputs differ by more than one level, and where.
Speed: images/s of each JAX view (jitted over a batch, batched by lax.map and by vmap)
against its tf.data view (parallel map, batched), in the same run.

    PYTHONPATH=. python -m ncl_jax.perf.jax_augment_check [--write] [--speed_images=2048]
        [--stats_view=cifar_randaugment] [--chain_images=3000]

`--write` replaces the agreement table in docs/data.md (between its markers).
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from ncl_jax.data import augment, augment_ops, jax_augment, jax_augment_ops, sources
from ncl_jax.data import augment_tables as tables
from ncl_jax.data.normalization import NORMALIZATION

_FILL = tables.GRAY_FILL
_BOX_SHRINK = (3, 5, 20, 27)  # (top, left, h, w): a crop shrunk to ... then enlarged to 32
_BOX_GROW = (3, 5, 10, 12)


def _box(values: tuple[int, ...]) -> tuple:
    return tuple(np.int32(v) for v in values)


# (name, fn(ops module, image) -> image, bound in levels). The TF and JAX op modules share op
# names and signatures, so one call states the case for both. Bounds other than 0 are where
# the float arithmetic differs: dm-pix's hue conversion (tf.image.adjust_hue's CPU kernel
# rounds differently) and the bilinear shear (dm-pix and TF interpolate in another order, and
# the result is truncated, so a value within float error of an integer may land one level
# lower).
OP_CASES: tuple[tuple[str, Callable[[Any, Any], Any], int], ...] = (
    ("invert", lambda o, x: o.invert(x), 0),
    ("solarize 113.78", lambda o, x: o.solarize(x, 113.78), 0),
    ("solarize_add 37", lambda o, x: o.solarize_add(x, 37.0), 0),
    ("posterize 3 bits", lambda o, x: o.posterize(x, 3), 0),
    ("posterize 0 bits", lambda o, x: o.posterize(x, 0), 0),
    ("autocontrast", lambda o, x: o.autocontrast(x), 0),
    ("equalize", lambda o, x: o.equalize(x), 0),
    ("grayscale", lambda o, x: o.grayscale(x), 0),
    ("brightness 1.37", lambda o, x: o.adjust_brightness(x, 1.37), 0),
    ("color 0.55", lambda o, x: o.adjust_color(x, 0.55), 0),
    ("contrast 1.37", lambda o, x: o.adjust_contrast(x, 1.37), 0),
    ("contrast 0.1", lambda o, x: o.adjust_contrast(x, 0.1), 0),
    ("sharpness 1.9", lambda o, x: o.adjust_sharpness(x, 1.9), 0),
    ("hue +0.07", lambda o, x: o.adjust_hue(x, 0.07), 1),
    ("hue -0.1", lambda o, x: o.adjust_hue(x, -0.1), 1),
    ("shear_x 0.23 bilinear", lambda o, x: o.shear_x(x, 0.23, fill=_FILL), 1),
    ("shear_y -0.27 bilinear", lambda o, x: o.shear_y(x, -0.27, fill=_FILL), 1),
    ("translate_x 7.3 bilinear", lambda o, x: o.translate_x(x, 7.3, fill=_FILL), 1),
    (
        "translate_y -13 nearest",
        lambda o, x: o.translate_y(x, -13.0, fill=_FILL, interpolation="NEAREST"),
        0,
    ),
    ("rotate 17 bilinear", lambda o, x: o.rotate(x, 17.0, fill=_FILL), 1),
    (
        "rotate 6.67 nearest",
        lambda o, x: o.rotate(x, 6.67, fill=_FILL, interpolation="NEAREST"),
        0,
    ),
    ("gaussian_blur sigma 0.3", lambda o, x: o.gaussian_blur(x, 0.3), 0),
    ("gaussian_blur sigma 1.7", lambda o, x: o.gaussian_blur(x, 1.7), 0),
    ("cutout at (3, 30)", lambda o, x: o.cutout(x, 3, 30, 16), 0),
    ("crop 20x27 resized to 32", lambda o, x: o.crop_and_resize(x, _box(_BOX_SHRINK), 32), 0),
    ("crop 10x12 resized to 32", lambda o, x: o.crop_and_resize(x, _box(_BOX_GROW), 32), 0),
)

# AutoAugment / RandAugment branches: (sign, magnitude bin) and (sign, level) compared.
AUTOAUGMENT_SETTINGS = ((1.0, 7), (-1.0, 9))
RAND_AUGMENT_SETTINGS = ((1.0, 10.0), (-1.0, 7.7))
# The branches built on the bilinear shear, translate and rotate inherit its one level.
_GEOMETRIC_BILINEAR = {"shearX", "shearY", "Rotate", "ShearX", "ShearY"}
_GEOMETRIC_BILINEAR |= {"TranslateXRel", "TranslateYRel"}


def check_images(count: int = 8, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 [count, size, size, 3]: half per-pixel noise, half smooth (upsampled 4x4 noise),
    each in its own random value range, so autocontrast and equalize see varied histograms."""
    rng = np.random.default_rng(seed)
    images = []
    for i in range(count):
        lo = int(rng.integers(0, 100))
        hi = int(rng.integers(lo + 2, 257))
        if i % 2 == 0:
            image = rng.integers(lo, hi, (size, size, 3))
        else:
            coarse = rng.integers(lo, hi, (4, 4, 3)).astype(np.float64)
            image = jax.image.resize(coarse, (size, size, 3), "linear")
            image = np.clip(np.round(np.asarray(image)), lo, hi - 1)
        images.append(image)
    return np.stack(images).astype(np.uint8)


def _tf_ops(fn: Callable, images: np.ndarray) -> np.ndarray:
    return np.stack([np.asarray(fn(tf.constant(x.astype(np.float32)))) for x in images])


def jax_ops(fn: Callable, images: np.ndarray) -> np.ndarray:
    """fn batched over the images and jitted as apply_view runs the views on this platform
    (jax_augment.resolve_batching; XLA fuses there)."""
    batching = jax_augment.resolve_batching()
    run = jax.jit(
        lambda x: jax_augment.map_images(lambda im, _: fn(im), x, x[:, 0, 0, 0], batching)
    )
    return np.asarray(run(jnp.asarray(images, jnp.float32)))


def compare(tf_out: np.ndarray, jax_out: np.ndarray) -> tuple[float, float]:
    """(max |difference| in levels, fraction of values that differ)."""
    diff = np.abs(tf_out.astype(np.float64) - jax_out.astype(np.float64))
    return float(diff.max()), float(np.mean(diff > 0))


def op_agreement(images: np.ndarray) -> list[tuple[str, float, float, int]]:
    """Rows (case, max diff, fraction differing, bound) for every case of OP_CASES."""
    rows = []
    for name, fn, bound in OP_CASES:
        tf_out = _tf_ops(lambda x, f=fn: f(augment_ops, x), images)
        jax_out = jax_ops(lambda x, f=fn: f(jax_augment_ops, x), images)
        rows.append((name, *compare(tf_out, jax_out), bound))
    return rows


def policy_cases(shape: tuple[int, ...]):
    """(name, TF fn, JAX fn, bound) for every AutoAugment and RandAugment branch and setting."""
    for index, op in enumerate((*tables.AUTOAUGMENT_OPS, "identity")):
        for sign, m_bin in AUTOAUGMENT_SETTINGS:
            m = tables.autoaugment_magnitude(op, m_bin) if op != "identity" else 0.0
            tf_fn = functools.partial(_tf_autoaugment, index=index, magnitude=m, sign=sign)
            jax_fn = jax_augment.autoaugment_branches(shape, m, sign)[index]
            yield f"AutoAugment {op}", tf_fn, jax_fn, int(op in _GEOMETRIC_BILINEAR)
    for index, op in enumerate((*tables.RAND_AUGMENT_OPS, "identity")):
        for sign, level in RAND_AUGMENT_SETTINGS:
            tf_fn = functools.partial(_tf_rand_augment, index=index, level=level, sign=sign)
            jax_fn = jax_augment.rand_augment_branches(shape, level, sign, fill=_FILL)[index]
            yield f"RandAugment {op}", tf_fn, jax_fn, int(op in _GEOMETRIC_BILINEAR)


def _tf_autoaugment(image, *, index, magnitude, sign):
    return augment.autoaugment_op(image, index, magnitude, sign)


def _tf_rand_augment(image, *, index, level, sign):
    return augment.rand_augment_op(image, index, level, sign, fill=_FILL)


def policy_agreement(images: np.ndarray) -> list[tuple[str, float, float, int]]:
    """Rows for every AutoAugment and RandAugment branch: the worst of its settings."""
    worst: dict[str, tuple[float, float, int]] = {}
    for name, tf_fn, jax_fn, bound in policy_cases(images.shape[1:]):
        got = compare(_tf_ops(tf_fn, images), jax_ops(jax_fn, images))
        worst[name] = (*max(got, worst.get(name, (0.0, 0.0))[:2]), bound)
    return [(name, *row) for name, row in worst.items()]


def chain_agreement(images: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Two RandAugment layers chained, as `rand_augment` applies them, through the TF ops and
    the JAX ops with the same parameters, drawn per image as the views draw them (ops uniform,
    levels ~ N(10, 0.5) clipped to [0, 10], signs +-1; no skipped layers).

    images: uint8 [N, H, W, 3]. Returns {"images": N, "over_one": images whose chained
    outputs differ anywhere by more than one level, "max": the largest difference in levels,
    "pairs": {(op, op): (count, max difference)} for the pairs with a difference over one,
    "mean_tf"/"mean_jax": the mean level of all outputs}. Single ops are compared by
    `policy_agreement`; this shows whether one op's rounding grows through the next.
    """
    rng = np.random.default_rng(seed)
    count, names = len(images), tables.RAND_AUGMENT_OPS
    index = rng.integers(0, len(names), (count, tables.RAND_AUGMENT_LAYERS)).astype(np.int32)
    level = np.clip(
        tables.RAND_AUGMENT_MAGNITUDE
        + tables.RAND_AUGMENT_MAGNITUDE_STD * rng.standard_normal(index.shape),
        0.0,
        10.0,
    ).astype(np.float32)
    sign = np.where(rng.random(index.shape) < 0.5, -1.0, 1.0).astype(np.float32)

    @tf.function
    def tf_chain(image, index, level, sign):
        for k in range(tables.RAND_AUGMENT_LAYERS):
            image = augment.rand_augment_op(image, index[k], level[k], sign[k], fill=_FILL)
        return image

    def jax_chain(args):
        image, index, level, sign = args
        for k in range(tables.RAND_AUGMENT_LAYERS):
            image = jax_augment.rand_augment_op(image, index[k], level[k], sign[k], fill=_FILL)
        return image

    params = (index, level, sign)
    tf_out = np.stack(
        [
            np.asarray(tf_chain(tf.constant(x, tf.float32), *(p[n] for p in params)))
            for n, x in enumerate(images)
        ]
    )
    run = jax.jit(lambda *args: jax.lax.map(jax_chain, args))
    jax_out = np.asarray(run(jnp.asarray(images, jnp.float32), *map(jnp.asarray, params)))
    worst = np.abs(tf_out - jax_out).reshape(count, -1).max(axis=1)
    pairs: dict[tuple[str, ...], tuple[int, float]] = {}
    for n in np.nonzero(worst > 1)[0]:
        pair = tuple(names[i] for i in index[n])
        seen, top = pairs.get(pair, (0, 0.0))
        pairs[pair] = (seen + 1, max(top, float(worst[n])))
    return {
        "images": count,
        "over_one": int(np.sum(worst > 1)),
        "max": float(worst.max()),
        "pairs": pairs,
        "mean_tf": float(tf_out.mean()),
        "mean_jax": float(jax_out.mean()),
    }


def markdown_table(rows: list[tuple[str, float, float, int]]) -> str:
    lines = [
        "| op (JAX vs TF, same parameters) | max diff (levels) | values differing | bound tested |",
        "|---|---|---|---|",
    ]
    for name, worst, fraction, bound in rows:
        lines.append(f"| {name} | {worst:g} | {fraction:.3%} | {bound} |")
    return "\n".join(lines)


def jax_view_rate(name: str, count: int, batching: str, batch: int = 256) -> float:
    """Images/s of apply_view(name) batched as `batching` on `count` random 32x32 images, in
    jitted batches of `batch` (compiled first, not timed)."""
    images = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    fn = jax.jit(lambda x, k: jax_augment.apply_view(name, x, k, batching=batching))
    batches = [jnp.asarray(images[i : i + batch]) for i in range(0, count, batch)]
    keys = [jax.random.split(jax.random.key(i), b.shape[0]) for i, b in enumerate(batches)]
    fn(batches[0], keys[0]).block_until_ready()
    start = time.perf_counter()
    for b, k in zip(batches, keys, strict=True):
        fn(b, k).block_until_ready()
    return count / (time.perf_counter() - start)


def tf_view_rate(name: str, count: int, batch: int = 256) -> float:
    """Images/s of the tf.data view `name` on `count` random 32x32 images: mapped in parallel
    (AUTOTUNE) and batched by `batch`, after one warm-up batch."""
    images = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    view = augment.make_view(name, image_size=32, normalization="cifar")
    ds = tf.data.Dataset.from_tensor_slices(images).enumerate()
    ds = ds.map(
        lambda i, x: view(x, tf.stack([tf.constant(0, tf.int64), i])),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).batch(batch)
    for _ in ds.take(1):
        pass
    start = time.perf_counter()
    for _ in ds:
        pass
    return count / (time.perf_counter() - start)


def view_statistics(name: str, images: np.ndarray, seed: int) -> dict[str, dict[str, float]]:
    """{"tf": stats, "jax": stats} of view `name` on uint8 images [N, 32, 32, 3] through both
    implementations, keyed by `seed` (TF: seed (seed, i) for image i; JAX: split(key(seed))):
    the mean and std of the 8-bit levels, and the fractions of pixels that are black (the
    Cutout hole, among others) and the gray fill of the geometric ops. Two seeds of one
    implementation show how much these move by chance (docs/results.md, the pipelines)."""
    mean, std = (np.asarray(v, np.float64) for v in NORMALIZATION["cifar"])

    def stats(out: np.ndarray) -> dict[str, float]:
        levels = np.round((out.astype(np.float64) * std + mean) * 255.0)
        return {
            "mean": float(levels.mean()),
            "std": float(levels.std()),
            "black": float(np.all(levels == 0, axis=-1).mean()),
            "gray_fill": float(np.all(levels == tables.GRAY_FILL[0], axis=-1).mean()),
        }

    view = augment.make_view(name, image_size=images.shape[1], normalization="cifar")
    ds = tf.data.Dataset.from_tensor_slices(images).enumerate()
    ds = ds.map(
        lambda i, x: view(x, tf.stack([tf.constant(seed, tf.int64), i])),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).batch(1000)
    tf_out = np.concatenate([np.asarray(b) for b in ds])
    fn = jax.jit(lambda x, k: jax_augment.apply_view(name, x, k))
    keys = jax.random.split(jax.random.key(seed), len(images))
    jax_out = np.concatenate(
        [
            np.asarray(fn(jnp.asarray(images[i : i + 1000]), keys[i : i + 1000]))
            for i in range(0, len(images), 1000)
        ]
    )
    return {"tf": stats(tf_out), "jax": stats(jax_out)}


_START = "<!-- jax_augment_check: start -->"
_END = "<!-- jax_augment_check: end -->"


def write_table(table: str, path: pathlib.Path) -> None:
    """Replace the text between the markers in `path` with `table`."""
    text = path.read_text()
    head, rest = text.split(_START, 1)
    _, tail = rest.split(_END, 1)
    path.write_text(f"{head}{_START}\n{table}\n{_END}{tail}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="update docs/data.md's table")
    parser.add_argument("--speed_images", type=int, default=2048, help="0: skip the timing")
    parser.add_argument(
        "--stats_view",
        default="",
        help="also print view_statistics of this view on the cifar10_jpeg test images "
        "(TFDS_DATA_DIR), seeds 7 and 8",
    )
    parser.add_argument(
        "--chain_images",
        type=int,
        default=0,
        help="also print chain_agreement on this many cifar10_jpeg test images (TFDS_DATA_DIR)",
    )
    args = parser.parse_args(argv)
    tf.config.set_visible_devices([], "GPU")
    images = check_images()
    rows = op_agreement(images) + policy_agreement(images)
    table = markdown_table(rows)
    print(table)
    over = [r for r in rows if r[1] > r[3]]
    if over:
        print("over their bound:", ", ".join(r[0] for r in over))
    if args.write:
        write_table(table, pathlib.Path(__file__).resolve().parents[2] / "docs" / "data.md")
    if args.stats_view or args.chain_images:
        test_images, _ = sources.load_tfds_arrays(tfds.builder("cifar10_jpeg"), "test", cache=False)
    if args.chain_images:
        chains = chain_agreement(test_images[: args.chain_images])
        print(
            f"RandAugment chains: {chains['over_one']} of {chains['images']} images differ by "
            f"more than one level (max {chains['max']:g}); mean level TF {chains['mean_tf']:.4f}, "
            f"JAX {chains['mean_jax']:.4f}"
        )
        for pair, (seen, top) in sorted(chains["pairs"].items()):
            print(f"  {' then '.join(pair)}: {seen} images, max {top:g}")
    if args.stats_view:
        for seed in (7, 8):
            for impl, st in view_statistics(args.stats_view, test_images, seed).items():
                shown = ", ".join(f"{k} {v:.4f}" for k, v in st.items())
                print(f"{args.stats_view} seed {seed} {impl}: {shown}", flush=True)
    if args.speed_images:
        print("| view | JAX map images/s | JAX vmap images/s | tf.data images/s | map / tf.data |")
        print("|---|---|---|---|---|")
        for name in jax_augment.JAX_VIEWS:
            mapped = jax_view_rate(name, args.speed_images, "map")
            vmapped = jax_view_rate(name, args.speed_images, "vmap")
            tf_rate = tf_view_rate(name, args.speed_images)
            rates = f"{mapped:.0f} | {vmapped:.0f} | {tf_rate:.0f} | {mapped / tf_rate:.2f}"
            print(f"| {name} | {rates} |", flush=True)


if __name__ == "__main__":
    main()
