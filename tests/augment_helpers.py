"""Small images and converters shared by the augmentation tests."""

import numpy as np
import tensorflow as tf
from PIL import Image

tf.config.set_visible_devices([], "GPU")  # the host pipeline never takes an accelerator

FILL = (124, 116, 104)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def noise(h: int = 20, w: int = 24, lo: int = 0, hi: int = 256, seed: int = 0) -> np.ndarray:
    return rng(seed).integers(lo, hi, (h, w, 3), dtype=np.uint8)


def smooth_image(h: int = 40, w: int = 40, seed: int = 0) -> np.ndarray:
    """A photo-like image: low-resolution noise upsampled bicubically."""
    return np.asarray(Image.fromarray(noise(8, 8, seed=seed)).resize((w, h), Image.BICUBIC))


# Test images: full range, narrow range, few distinct values, constant, a dominant value.
IMAGES = {
    "noise": noise(),
    "narrow": noise(lo=40, hi=171, seed=1),
    "few_values": (noise(seed=2) // 64 * 64).astype(np.uint8),
    "constant": np.full((12, 10, 3), 77, np.uint8),
    "dominant": np.where(noise(seed=3) < 200, 255, noise(seed=4)).astype(np.uint8),
}


def as_tf(x: np.ndarray) -> tf.Tensor:
    return tf.constant(x.astype(np.float32))


def as_np(x: tf.Tensor) -> np.ndarray:
    return np.asarray(x).astype(np.int64)


def pil(im: Image.Image) -> np.ndarray:
    return np.asarray(im).astype(np.int64)
