"""Fixtures and tiny datasets shared by the data tests."""

from __future__ import annotations

import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from ncl_jax.config.base import get_base_config

# Published CIFAR-LT profiles (LDAM-DRW and the official NCL README).
CIFAR10_IF100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
CIFAR10_IF50 = [5000, 3237, 2096, 1357, 878, 568, 368, 238, 154, 100]


def dataset_config(**overrides):
    cfg = get_base_config().dataset
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def ldam_subset(labels: np.ndarray, imb_factor: float, rand_number: int = 0) -> np.ndarray:
    """LDAM-DRW's IMBALANCECIFAR.gen_imbalanced_data, restated with numpy's GLOBAL seed."""
    cls_num = len(np.unique(labels))
    img_max = len(labels) / cls_num
    img_num_per_cls = [
        int(img_max * (imb_factor ** (cls_idx / (cls_num - 1.0)))) for cls_idx in range(cls_num)
    ]
    np.random.seed(rand_number)
    selected = []
    for the_class, the_img_num in zip(np.unique(labels), img_num_per_cls, strict=True):
        idx = np.where(labels == the_class)[0]
        np.random.shuffle(idx)
        selected.extend(idx[:the_img_num].tolist())
    return np.array(selected)


def encode(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return buffer.getvalue()


def id_image(i: int, size: int = 8) -> np.ndarray:
    """A tiny image whose first pixel spells its example id (read back by `read_ids`)."""
    image = np.full((size, size, 3), 77, np.uint8)
    image[0, 0] = (i % 256, i // 256 % 256, 0)
    return image


def read_ids(images: np.ndarray) -> np.ndarray:
    """Example ids from identity-view outputs (float pixel/255) of `id_image`s."""
    pixels = np.rint(np.asarray(images)[..., 0, 0, :] * 255).astype(np.int64)
    return pixels[..., 0] + 256 * pixels[..., 1]


def identity_views(name: str, *, image_size: int, normalization: str):
    """Stand-in for augment.make_view: pixels / 255, cropped or padded to image_size."""
    del name, normalization

    def view(image, seed):
        del seed
        image = tf.image.resize_with_crop_or_pad(image, image_size, image_size)
        return tf.cast(image, tf.float32) / 255.0

    return view


def write_images(root, rel_paths, fmt="PNG"):
    for k, rel in enumerate(rel_paths):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(encode(id_image(k), fmt))
