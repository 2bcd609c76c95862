"""TFDS sources on mocks: CIFAR-100, ImageNet-LT lists, Places-LT, iNaturalist, bad configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ncl_jax import data
from ncl_jax.data import sources
from ncl_jax.errors import ConfigError, DataError
from tests.data_helpers import dataset_config, encode, id_image, read_ids

# ---------------------------------------------------------------------------------- TFDS mocks


class FakeTFDS:
    """Records per (builder, split) served through tfds.testing.mock_data and real metadata."""

    def __init__(self, root):
        self.root = str(root)
        self.records: dict[tuple[str, str], dict[str, np.ndarray]] = {}

    def add(self, name: str, split: str, **columns) -> None:
        self.records[(name, split)] = {k: np.asarray(v) for k, v in columns.items()}
        builder = tfds.builder(name, data_dir=self.root)
        known = {s: len(c["label"]) for (n, s), c in self.records.items() if n == name}
        builder.info.set_splits(
            tfds.core.SplitDict(
                [
                    tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0)
                    for s, n in known.items()
                ]
            )
        )
        builder.data_path.mkdir(parents=True, exist_ok=True)
        builder.info.write_to_directory(builder.data_path)

    def as_dataset(self, builder, split, decoders=None, read_config=None, shuffle_files=False):
        del read_config, shuffle_files
        name = split if isinstance(split, str) else split.split
        (instruction,) = builder.info.splits[split].file_instructions
        columns = {
            k: v[instruction.skip : instruction.skip + instruction.take]
            for k, v in self.records[(builder.name, name)].items()
        }
        if isinstance(decoders, tfds.decode.PartialDecoding):
            columns = {"label": columns["label"]}
        elif not (decoders and "image" in decoders):
            columns["image"] = np.stack([tf.io.decode_image(b).numpy() for b in columns["image"]])
        return tf.data.Dataset.from_tensor_slices(columns)

    def __enter__(self):
        def as_dataset(builder, split, decoders=None, read_config=None, shuffle_files=False):
            return self.as_dataset(builder, split, decoders, read_config, shuffle_files)

        self._mock = tfds.testing.mock_data(
            data_dir=self.root,
            policy=tfds.testing.MockPolicy.USE_FILES,
            as_dataset_fn=as_dataset,
        )
        self._mock.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mock.__exit__(*exc)


def test_cifar100_mock_recovers_release_order_and_long_tail(tmp_path):
    fake = FakeTFDS(tmp_path)
    n = 500  # 5 images per class
    labels = np.arange(n) % 100
    images = [encode(id_image(i, 32)) for i in range(n)]
    stored = np.random.default_rng(0).permutation(n)  # TFDS shards are not in release order
    fake.add(
        "cifar100",
        "train",
        image=[images[i] for i in stored],
        label=labels[stored],
        id=[f"train_{i:05d}" for i in stored],
        coarse_label=labels[stored] // 5,
    )
    fake.add(
        "cifar100",
        "test",
        image=images[:200],
        label=labels[:200],
        id=[f"test_{i:05d}" for i in range(200)],
        coarse_label=labels[:200] // 5,
    )
    cfg = dataset_config(
        name="cifar100", num_classes=100, imbalance_factor=5.0, data_dir=str(tmp_path)
    )
    with fake:
        info = data.get_dataset_info(cfg)
        split = sources.in_memory_split(tfds.builder("cifar100"), "train", cache=False)
    assert np.array_equal(split.labels, labels)
    assert np.array_equal(read_ids(split.images / 255.0), np.arange(n))
    assert info.class_counts.tolist() == data.long_tailed_counts(5, 100, 5.0).tolist()
    assert (info.num_train, info.num_eval) == (info.class_counts.sum(), 200)


def imagenet_names(c: int, i: int) -> str:
    return f"n{c:08d}_{i}.JPEG"


@pytest.fixture
def fake_imagenet(tmp_path):
    """imagenet2012 mock + ImageNet-LT style lists: class 0 has 40 listed images, others 1."""
    fake = FakeTFDS(tmp_path / "tfds")
    members = [(0, i) for i in range(40)] + [(c, 0) for c in range(1, 1000)]
    outsiders = [(c, 99) for c in range(30)]  # in the TFDS split, not in the list
    records = members + outsiders
    order = np.random.default_rng(1).permutation(len(records))
    records = [records[i] for i in order]
    fake.add(
        "imagenet2012",
        "train",
        image=[encode(id_image(k)) for k in range(len(records))],
        label=[(c + 1) % 1000 for c, _ in records],  # list labels must win over these
        file_name=[imagenet_names(c, i) for c, i in records],
    )
    fake.add(
        "imagenet2012",
        "validation",
        image=[encode(id_image(k)) for k in range(1000)],
        label=np.arange(1000),
        file_name=[f"ILSVRC2012_val_{k:08d}.JPEG" for k in range(1000)],
    )
    train_list = tmp_path / "ImageNet_LT_train.txt"
    train_list.write_text(
        "".join(f"train/n{c:08d}/{imagenet_names(c, i)} {c}\n" for c, i in members)
    )
    eval_list = tmp_path / "ImageNet_LT_test.txt"
    eval_list.write_text(
        "".join(f"val/n{k:08d}/ILSVRC2012_val_{k:08d}.JPEG {k}\n" for k in range(0, 1000, 3))
    )
    cfg = dataset_config(
        name="imagenet2012",
        num_classes=1000,
        imbalance_factor=0.0,
        data_dir=str(tmp_path),
        train_list=str(train_list),
        eval_list=str(eval_list),
        eval_split="validation",
        image_size=8,
        shuffle_buffer=64,
    )
    truth = {k: c for k, (c, i) in enumerate(records) if i != 99}  # example id -> list label
    with fake:
        yield cfg, truth


def test_imagenet_lt_from_imagenet2012_list(fake_imagenet, identity_view):
    cfg, truth = fake_imagenet
    info = data.get_dataset_info(cfg)
    assert info.class_counts[0] == 40 and info.class_counts[1:].tolist() == [1] * 999
    assert (info.num_train, info.num_eval) == (1039, 334)
    assert info.group_masks("official")["few"].sum() == 999
    seen = []
    for process in range(2):
        batches = list(
            data.train_iterator(
                cfg,
                global_batch_size=64,
                seed=1,
                epoch=0,
                num_local_devices=2,
                process_index=process,
                process_count=2,
            )
        )
        assert len(batches) == 1039 // 64
        assert batches[0]["image"].shape == (2, 16, 8, 8, 3)
        for batch in batches:
            ids = read_ids(batch["image"]).ravel()
            assert all(
                truth[i] == label for i, label in zip(ids, batch["label"].ravel(), strict=True)
            )
            seen.extend(ids)
    assert len(set(seen)) > 900  # two shuffled passes over the shards, list members only


def test_streamed_eval_counts_every_list_image_once(fake_imagenet, identity_view):
    cfg, _ = fake_imagenet
    found, masks = [], 0
    for process in range(2):
        batches = list(
            data.eval_iterator(
                cfg,
                global_batch_size=128,
                num_local_devices=2,
                process_index=process,
                process_count=2,
            )
        )
        assert len(batches) == 3  # ceil(334 / 128)
        for batch in batches:
            mask = batch["mask"]
            masks += mask.size
            ids = read_ids(batch["image"])[mask]
            assert np.array_equal(ids, batch["label"][mask])
            found.extend(ids.tolist())
    assert sorted(found) == list(range(0, 1000, 3)) and masks == 3 * 128
    cfg.eval_max_examples = 100
    batches = list(data.eval_iterator(cfg, global_batch_size=64, num_local_devices=1))
    assert sum(b["mask"].sum() for b in batches) == 100


def test_places_lt_list_matches_places365_file_names(tmp_path, identity_view):
    fake = FakeTFDS(tmp_path / "tfds")
    names = [f"{c:03d}/{i:08d}.jpg" for c in range(365) for i in range(2 if c < 5 else 1)]
    fake.add(
        "places365_small",
        "train",
        image=[encode(id_image(k)) for k in range(len(names))],
        label=[int(n[:3]) for n in names],
        filename=[f"data_256/x/{n}" for n in names],
    )
    fake.add(
        "places365_small",
        "validation",
        image=[encode(id_image(k)) for k in range(4)],
        label=[0, 1, 2, 3],
        filename=[f"val_256/Places365_val_{k:08d}.jpg" for k in range(4)],
    )
    listing = tmp_path / "Places_LT_train.txt"
    listing.write_text("".join(f"/x/{n} {int(n[:3])}\n" for n in names[1:]))  # drop one
    cfg = dataset_config(
        name="places365_small",
        num_classes=365,
        imbalance_factor=0.0,
        data_dir=str(tmp_path),
        train_list=str(listing),
        eval_split="validation",
        image_size=8,
        shuffle_buffer=32,
    )
    with fake:
        info = data.get_dataset_info(cfg)
        assert info.class_counts[:6].tolist() == [1, 2, 2, 2, 2, 1]
        batch = next(
            data.train_iterator(cfg, global_batch_size=32, seed=0, epoch=0, num_local_devices=1)
        )
    assert 0 not in read_ids(batch["image"])  # the unlisted record is filtered out


def test_inaturalist_counts_from_label_pass_are_cached(tmp_path, identity_view):
    fake = FakeTFDS(tmp_path / "tfds")
    labels = np.concatenate([np.zeros(10, np.int64), np.arange(8142)])
    image = encode(id_image(5))
    fake.add(
        "i_naturalist2018",
        "train",
        image=[image] * len(labels),
        label=labels,
        id=[f"img{k}" for k in range(len(labels))],
        supercategory=labels % 14,
    )
    fake.add(
        "i_naturalist2018",
        "validation",
        image=[image] * 3,
        label=[0, 1, 2],
        id=["v0", "v1", "v2"],
        supercategory=[0, 0, 0],
    )
    cfg = dataset_config(
        name="i_naturalist2018",
        num_classes=8142,
        imbalance_factor=0.0,
        data_dir=str(tmp_path),
        eval_split="validation",
        image_size=8,
        normalization="inat",
        shuffle_buffer=64,
        cache=False,
    )
    with fake:
        info = data.get_dataset_info(cfg)
        assert info.class_counts[0] == 11 and info.num_train == 8152
        cache = str(tfds.builder("i_naturalist2018").data_dir) + "/ncl_jax_class_counts.train.json"
        with open(cache) as f:
            assert json.load(f)["counts"][:2] == [11, 1]
        with open(cache, "w") as f:  # a changed cache proves the second call reads it
            json.dump({"counts": [3] * 8142}, f)
        assert data.get_dataset_info(cfg).class_counts[0] == 3
        batch = next(
            data.train_iterator(cfg, global_batch_size=16, seed=0, epoch=0, num_local_devices=1)
        )
    assert batch["image"].shape == (1, 16, 8, 8, 3) and batch["label"].dtype == np.int32


def test_missing_tfds_dataset_says_where_and_how(tmp_path):
    # download off: the default ("auto") would fetch cifar100 (tests/test_tfds_download.py)
    cfg = dataset_config(name="cifar100", data_dir=str(tmp_path), download="False")
    with pytest.raises(DataError) as err:
        data.get_dataset_info(cfg)
    message = str(err.value)
    assert str(tmp_path) in message and "TFDS_DATA_DIR" in message
    assert "--config.dataset.data_dir" in message and "download=True" in message
    assert "\n" not in message
    cfg = dataset_config(name="cifar10_jpeg", num_classes=10, data_dir=str(tmp_path))
    with pytest.raises(DataError, match="cannot be downloaded"):
        data.get_dataset_info(cfg)


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        ({"source": "hdf5"}, ConfigError, "source='hdf5' is unknown"),
        ({"name": "mnist"}, ConfigError, "not a supported TFDS builder"),
        ({"num_classes": 10}, ConfigError, "has 100 classes"),
        ({"eval_split": "val"}, ConfigError, "eval_split='val' is not a split"),
        ({"train_list": "x.txt"}, ConfigError, "has no file names"),
        ({"imbalance_factor": 0.5}, DataError, "below 1"),
        ({"imbalance_factor": 1000.0}, DataError, "leaves class 10 with 0 images"),
    ],
)
def test_bad_tfds_configs_fail_fast(tmp_path, overrides, error, match):
    fake = FakeTFDS(tmp_path)
    labels = np.arange(200) % 100
    images = [encode(id_image(0, 32))] * 200
    for split in ("train", "test"):
        fake.add(
            "cifar100",
            split,
            image=images,
            label=labels,
            id=[f"{split}_{i:05d}" for i in range(200)],
            coarse_label=labels // 5,
        )
    with fake, pytest.raises(error, match=match):
        data.get_dataset_info(dataset_config(data_dir=str(tmp_path), **overrides))


def test_streamed_builder_rejects_imbalance_factor(fake_imagenet):
    cfg, _ = fake_imagenet
    cfg.imbalance_factor = 100.0
    with pytest.raises(ConfigError, match="imbalance_factor=0"):
        data.get_dataset_info(cfg)
