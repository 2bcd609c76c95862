"""tf.data pipelines end to end on the real offline CIFAR-10 (JPEG) copy and on a tiny folder.

Checks the contract the training loop relies on: shapes and dtypes, labels of the LDAM subset,
two different views, exact-once evaluation with padding, determinism per (seed, epoch), exact
resume from start_step, and identical global batches for 1 process x 4 devices vs 2 x 2.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from ncl_jax import data
from ncl_jax.data import augment, pipeline, sources
from ncl_jax.data.datasets import resolve
from tests.data_helpers import dataset_config, ldam_subset, read_ids, write_images

CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
FIRST_TRAIN_LABELS = [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # official release order


def standin_views(name: str, *, image_size: int, normalization: str):
    """Cheap stand-in for augment.make_view: 'cifar_test' is pixels/255, others add seeded noise."""
    del normalization

    def view(image, seed):
        x = tf.cast(tf.image.resize_with_crop_or_pad(image, image_size, image_size), tf.float32)
        if name == "cifar_test":
            return x / 255.0
        flip = tf.random.stateless_uniform([], seed) < 0.5
        x = tf.where(flip, x[:, ::-1], x)
        return x / 255.0 + tf.random.stateless_uniform([1, 1, 3], seed, -0.1, 0.1)

    return view


@pytest.fixture
def standin(monkeypatch):
    monkeypatch.setattr(pipeline, "_make_view", standin_views)


# The real-CIFAR tests decode all 60,000 offline images first (about 8 s on 2 cores): full
# suite only (slow tier); the fast tier tests the same pipeline on small folders and fakes.
real_cifar = pytest.mark.slow


@pytest.fixture(scope="module")
def cifar():
    """The offline cifar10_jpeg: the subset config, its info and every image decoded."""
    root = os.environ.get("TFDS_DATA_DIR", "")
    if not os.path.isdir(os.path.join(root, "cifar10_jpeg")):
        pytest.skip(f"offline cifar10_jpeg not found under TFDS_DATA_DIR={root!r}")
    cfg = dataset_config(name="cifar10_jpeg", num_classes=10, imbalance_factor=100.0)
    info = data.get_dataset_info(cfg)
    builder = tfds.builder("cifar10_jpeg")
    train_images, train_labels = sources.load_tfds_arrays(builder, "train", cache=True)
    test_images, _ = sources.load_tfds_arrays(builder, "test", cache=True)
    return cfg, info, builder, train_images, train_labels, test_images


def digest(image: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image, np.uint8).tobytes()).hexdigest()


def pixels(batch_images: np.ndarray) -> np.ndarray:
    """uint8 images back from the 'cifar_test' stand-in (pixels / 255), flattened over devices."""
    return np.rint(batch_images.reshape(-1, *batch_images.shape[2:]) * 255).astype(np.uint8)


def epoch(cfg, **kwargs):
    return list(data.train_iterator(cfg, **kwargs))


@real_cifar
def test_cifar10_jpeg_info_order_and_exact_decoding(cifar):
    cfg, info, builder, train_images, train_labels, _ = cifar
    assert info.class_counts.tolist() == CIFAR10_IF100
    assert (info.num_train, info.num_eval, info.num_classes) == (12_406, 10_000, 10)
    assert train_labels[:10].tolist() == FIRST_TRAIN_LABELS
    raw = builder.as_dataset(split="train[:200]", decoders={"image": tfds.decode.SkipDecoding()})
    for record in raw.take(200).as_numpy_iterator():
        position = int(record["id"].decode().split("_")[1])
        decoded = np.asarray(Image.open(io.BytesIO(record["image"])).convert("RGB"))
        assert np.array_equal(train_images[position], decoded), "must equal PIL pixels"
        assert train_labels[position] == record["label"]


@real_cifar
def test_cifar10_subset_is_the_ldam_subset(cifar):
    cfg, _, _, train_images, train_labels, _ = cifar
    expected = ldam_subset(train_labels, 0.01, 0)
    train = resolve(cfg).train  # only the subset's images are decoded and stored, in its order
    assert np.array_equal(train.labels, train_labels[expected])
    assert np.array_equal(train.images[train.rows], train_images[expected])
    assert np.array_equal(data.long_tailed_indices(train_labels, 100), expected)


@real_cifar
def test_cifar10_train_batch_real_views(cifar):
    cfg, *_ = cifar
    cfg = cfg.copy_and_resolve_references()
    cfg.train_view = "cifar_autoaugment"
    batch = next(
        data.train_iterator(
            cfg, global_batch_size=64, seed=0, epoch=0, two_views=True, num_local_devices=2
        )
    )
    assert set(batch) == {"image", "key_image", "label"}
    for key in ("image", "key_image"):
        assert batch[key].shape == (2, 32, 32, 32, 3) and batch[key].dtype == np.float32
        mean, std = (np.array(v) for v in augment.NORMALIZATION["cifar"])
        assert np.all(batch[key] >= (0 - mean) / std - 1e-5)
        assert np.all(batch[key] <= (1 - mean) / std + 1e-5)
    assert batch["label"].shape == (2, 32) and batch["label"].dtype == np.int32
    assert not np.allclose(batch["image"], batch["key_image"])
    assert batch["image"].std(axis=(0, 1, 4)).mean() > 0.3  # not constant images


@real_cifar
def test_cifar10_labels_match_the_chosen_images(cifar, standin):
    cfg, _, _, train_images, train_labels, _ = cifar
    cfg = cfg.copy_and_resolve_references()
    cfg.train_view = "cifar_test"
    chosen = set(ldam_subset(train_labels, 0.01, 0).tolist())  # what resolve keeps (above)
    where = collections.defaultdict(list)
    for position in range(len(train_images)):
        where[digest(train_images[position])].append(position)
    batches = epoch(cfg, global_batch_size=512, seed=3, epoch=1, num_local_devices=4)
    assert len(batches) == 12_406 // 512
    seen = []
    for batch in batches:
        for image, label in zip(pixels(batch["image"]), batch["label"].ravel(), strict=True):
            candidates = [p for p in where[digest(image)] if p in chosen]
            assert candidates and train_labels[candidates[0]] == label
            seen.append(candidates[0])
    assert len(set(seen)) >= len(seen) - 5  # no repeats within an epoch (up to duplicate images)


@real_cifar
def test_cifar10_eval_counts_each_test_image_once(cifar, standin):
    cfg, _, _, _, _, test_images = cifar
    found, slots = [], 0
    for process in range(2):
        for batch in data.eval_iterator(
            cfg, global_batch_size=3000, num_local_devices=3, process_index=process, process_count=2
        ):
            assert batch["image"].shape == (3, 500, 32, 32, 3) and batch["mask"].dtype == bool
            slots += batch["mask"].size
            found.extend(digest(im) for im in pixels(batch["image"])[batch["mask"].ravel()])
    assert slots == 12_000 and len(found) == 10_000
    assert collections.Counter(found) == collections.Counter(digest(im) for im in test_images)


@real_cifar
def test_cifar10_determinism_resume_and_sharding(cifar, standin):
    cfg, *_ = cifar
    kwargs = dict(global_batch_size=2048, seed=5, two_views=True)
    full = epoch(cfg, epoch=2, num_local_devices=4, **kwargs)
    again = next(data.train_iterator(cfg, epoch=2, num_local_devices=4, **kwargs))
    other = next(data.train_iterator(cfg, epoch=3, num_local_devices=4, **kwargs))
    tail = epoch(cfg, epoch=2, start_step=4, num_local_devices=4, **kwargs)
    assert len(full) == 12_406 // 2048 and len(tail) == 2
    assert all(np.array_equal(full[0][k], again[k]) for k in again)
    assert not np.array_equal(full[0]["label"], other["label"])
    for a, b in zip(full[4:], tail, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    halves = [
        epoch(
            cfg,
            epoch=2,
            start_step=5,
            num_local_devices=2,
            process_index=p,
            process_count=2,
            **kwargs,
        )
        for p in range(2)
    ]
    (p0,), (p1,) = halves
    for key in full[5]:
        assert np.array_equal(np.concatenate([p0[key], p1[key]]), full[5][key])


@pytest.fixture
def tiny_folder(tmp_path):
    """30 + 10 + 6 PNG images whose first pixel spells their id (see data_helpers.id_image)."""
    sizes = (30, 10, 6)
    train = [f"train/c{c}/{i:02d}.png" for c, n in enumerate(sizes) for i in range(n)]
    write_images(tmp_path, train)
    write_images(tmp_path, [f"test/c{c}/0.png" for c in range(3)])
    return dataset_config(
        source="image_folder",
        name="tiny",
        num_classes=3,
        imbalance_factor=0.0,
        image_root=str(tmp_path),
        image_size=8,
        train_view="cifar_test",
        key_view="moco_cifar",
        num_parallel_calls=-1,
    )


def test_folder_epochs_are_permutations_and_shard_identically(tiny_folder, standin):
    cfg = tiny_folder
    kwargs = dict(global_batch_size=8, seed=0, two_views=True)
    single = epoch(cfg, epoch=0, num_local_devices=4, **kwargs)
    ids = np.concatenate([read_ids(b["image"]).ravel() for b in single])
    assert len(single) == 46 // 8 and len(set(ids.tolist())) == len(ids) == 40
    assert all(not np.array_equal(b["image"], b["key_image"]) for b in single)
    split = [
        epoch(cfg, epoch=0, num_local_devices=2, process_index=p, process_count=2, **kwargs)
        for p in range(2)
    ]
    for whole, p0, p1 in zip(single, *split, strict=True):
        for key in whole:
            assert np.array_equal(whole[key], np.concatenate([p0[key], p1[key]]))
    cfg.num_parallel_calls = 1
    serial = epoch(cfg, epoch=0, num_local_devices=4, **kwargs)
    for a, b in zip(single, serial, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in a)
    next_epoch = np.concatenate(
        [read_ids(b["image"]).ravel() for b in epoch(cfg, epoch=1, num_local_devices=4, **kwargs)]
    )
    assert not np.array_equal(ids, next_epoch)


def test_benchmark_pipeline_reports_throughput(tiny_folder, standin):
    result = data.benchmark_pipeline(
        tiny_folder, global_batch_size=8, num_batches=7, two_views=True
    )
    assert result["num_images"] == 56 and result["seconds"] > 0 and result["img_per_s"] > 0
