"""Split-list and image-folder sources, and batch sharding checks."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ncl_jax import data
from ncl_jax.errors import ConfigError, DataError
from tests.data_helpers import dataset_config, read_ids, write_images


def test_split_list_source(tmp_path, identity_view):
    train = [f"train/c{c}/{i}.png" for c in range(3) for i in range(20)]
    evals = [f"val/c{c}/{i}.jpg" for c in range(3) for i in range(2)]
    write_images(tmp_path / "img", train)
    write_images(tmp_path / "img", evals, "JPEG")
    (tmp_path / "train.txt").write_text("".join(f"/{p} {i // 20}\n" for i, p in enumerate(train)))
    (tmp_path / "eval.txt").write_text("".join(f"{p} {i // 2}\n" for i, p in enumerate(evals)))
    cfg = dataset_config(
        source="split_list",
        name="tiny_lt",
        num_classes=3,
        imbalance_factor=4.0,
        image_root=str(tmp_path / "img"),
        train_list=str(tmp_path / "train.txt"),
        eval_list=str(tmp_path / "eval.txt"),
        image_size=8,
    )
    info = data.get_dataset_info(cfg)
    assert info.class_counts.tolist() == [20, 10, 5] and info.num_eval == 6
    batch = next(
        data.train_iterator(cfg, global_batch_size=8, seed=0, epoch=0, num_local_devices=2)
    )
    ids = read_ids(batch["image"])
    assert np.array_equal(ids // 20, batch["label"])  # id k was written for label k // 20
    (tmp_path / "eval.txt").write_text("val/c0/0.jpg 0\nval/c0/missing.jpg 0\n")
    cfg.cache = False
    with pytest.raises(DataError, match="missing.jpg, which does not exist"):
        data.get_dataset_info(cfg)
    (tmp_path / "eval.txt").write_text("val/c0/0.jpg 3\n")
    with pytest.raises(DataError, match=r"eval.txt:1: label 3 is outside \[0, 3\)"):
        data.get_dataset_info(cfg)
    (tmp_path / "eval.txt").write_text("val/c0/0.jpg\n")
    with pytest.raises(DataError, match="expected 'relative/path label'"):
        data.get_dataset_info(cfg)
    cfg.eval_list = ""
    with pytest.raises(ConfigError, match="needs dataset.eval_list"):
        data.get_dataset_info(cfg)


def test_image_folder_source(tmp_path, identity_view):
    train = [f"train/{c}/{i}.png" for c in ("b_cat", "a_dog") for i in range(3)]
    write_images(tmp_path, train)
    write_images(tmp_path, [f"test/{c}/0.jpeg" for c in ("b_cat", "a_dog")], "JPEG")
    cfg = dataset_config(
        source="image_folder",
        name="pets",
        num_classes=2,
        imbalance_factor=0.0,
        image_root=str(tmp_path),
        image_size=8,
        cache=False,
    )
    info = data.get_dataset_info(cfg)
    assert info.class_counts.tolist() == [3, 3] and info.num_eval == 2
    batches = list(data.eval_iterator(cfg, global_batch_size=4, num_local_devices=1))
    assert batches[0]["label"].tolist() == [[0, 1, 0, 0]]  # a_dog = 0, b_cat = 1
    assert batches[0]["mask"].tolist() == [[True, True, False, False]]
    cfg.num_classes = 3
    with pytest.raises(ConfigError, match="has 2 class folders"):
        data.get_dataset_info(cfg)
    cfg.num_classes = 2
    os.makedirs(tmp_path / "test" / "c_eel")
    with pytest.raises(DataError, match="differ from the training folder"):
        data.get_dataset_info(cfg)
    os.makedirs(tmp_path / "train" / "c_eel")
    with pytest.raises(DataError, match="c_eel holds no .jpg"):
        data.get_dataset_info(cfg)
    os.makedirs(tmp_path / "empty" / "train")
    with pytest.raises(DataError, match="no class folders"):
        data.get_dataset_info(
            dataset_config(source="image_folder", image_root=str(tmp_path / "empty"))
        )


def test_batch_sharding_must_divide(tmp_path):
    write_images(tmp_path, [f"train/a/{i}.png" for i in range(8)] + ["test/a/0.png"])
    cfg = dataset_config(
        source="image_folder",
        num_classes=1,
        imbalance_factor=0.0,
        image_root=str(tmp_path),
        image_size=8,  # the images' size: the CIFAR views take no smaller ones
    )
    with pytest.raises(ConfigError, match="not divisible by process_count"):
        data.train_iterator(cfg, global_batch_size=6, seed=0, epoch=0, num_local_devices=4)
    with pytest.raises(ConfigError, match="exceeds the 8 training images"):
        data.train_iterator(cfg, global_batch_size=16, seed=0, epoch=0, num_local_devices=4)
    assert data.steps_per_epoch(data.get_dataset_info(cfg), 3) == 2
