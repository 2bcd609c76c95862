"""Top-5 classes of image files with one exported expert (`ncl_jax.export`), jax alone.

prints one line per image, in the order given:

  IMAGE: NAME p, NAME p, ...      (the top_k classes, p = softmax probability, 4 decimals)

Each image is read with PIL, converted to RGB and brought to the exported size as DIR/model.json
says (the run's eval view: CIFAR images as they are, resized bilinearly only if they are not
S x S; other runs resize the shorter side, then take the centred S x S crop). The artefact
holds the normalisation, the weights and BatchNorm statistics. This module imports only jax
(`jax.export.deserialize`), numpy, PIL, absl and ncl_jax.cli / ncl_jax.errors: no
TensorFlow, TFDS, Flax, Orbax or ncl_jax model code, so a serving host needs jax and Pillow.
Bad input (no model in DIR, a missing or unreadable image) is one `error:` line, exit 2.

The program: `python -m ncl_jax.predict` (ncl_jax/predict.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence

import jax
import numpy as np
from jax import export
from PIL import Image, UnidentifiedImageError

from ncl_jax.errors import CheckpointError, ConfigError, DataError

ARTEFACT = "model.jaxexport"  # the same names as ncl_jax.export (not imported: it is heavy)
METADATA = "model.json"


class ExportedModel:
    """An exported expert and its metadata; `logits(images)` runs it on uint8 [b, S, S, 3]."""

    def __init__(self, model_dir: str):
        """Reads DIR/model.json and DIR/model.jaxexport. CheckpointError when either is
        missing, the artefact's checksum differs from the recorded one, the artefact does not
        deserialize, or it was not exported for this machine's platform."""

        hint = (
            f"export one with python -m ncl_jax.export --workdir=RUN --out={model_dir} "
            "(or fix --model)."
        )
        meta_path = os.path.join(model_dir, METADATA)
        if not os.path.isfile(meta_path):
            raise CheckpointError(f"{model_dir} holds no exported model ({METADATA}); {hint}")
        try:
            with open(meta_path) as f:
                self.metadata = json.load(f)
            artefact = os.path.join(model_dir, self.metadata.get("artefact", ARTEFACT))
        except (OSError, ValueError, AttributeError) as err:
            raise CheckpointError(f"{meta_path} cannot be read ({err}); {hint}") from None
        if not os.path.isfile(artefact):
            raise CheckpointError(f"{model_dir} has {METADATA} but no {ARTEFACT}; {hint}")
        with open(artefact, "rb") as f:
            serialized = f.read()
        expected = self.metadata.get("artefact_sha256")
        if expected and hashlib.sha256(serialized).hexdigest() != expected:
            raise CheckpointError(
                f"{artefact} does not match the checksum in {METADATA} (damaged or replaced); "
                f"{hint}"
            )
        try:
            self.exported = export.deserialize(bytearray(serialized))
        except Exception as err:  # noqa: BLE001 - flatbuffer/MLIR errors of many types
            raise CheckpointError(
                f"{artefact} cannot be deserialized by jax {jax.__version__} "
                f"({type(err).__name__}); {hint}"
            ) from None
        platform = export.default_export_platform()
        if platform not in self.exported.platforms:
            raise CheckpointError(
                f"{artefact} was exported for {', '.join(self.exported.platforms)}, but this "
                f"machine runs {platform}; export again with --platforms=...,{platform}."
            )
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.image_size = int(self.metadata["image_size"])
        self.preprocessing: dict = self.metadata["preprocessing"]

    def logits(self, images: np.ndarray) -> np.ndarray:
        """float32 [b, C] logits of uint8 images [b, S, S, 3] (any b >= 1)."""
        return np.asarray(self.exported.call(np.ascontiguousarray(images, np.uint8)))


def load_image(path: str, preprocessing: dict, image_size: int) -> np.ndarray:
    """uint8 [S, S, 3] RGB pixels of an image file, as the run's eval view saw them.

    resize_shorter R: shorter side to R, longer to int(R * long / short), bilinear (PIL
    antialiases when shrinking), then the centred crop of center_crop pixels with top/left =
    round((size - crop) / 2), as torchvision and `augment_ops.resize_shorter_center_crop`.
    Otherwise a bilinear resize to S x S when the image has another size. DataError for a
    missing file or one PIL cannot read."""

    if not os.path.isfile(path):
        what = "is a directory" if os.path.isdir(path) else "does not exist"
        raise DataError(f"image {path} {what}; pass image files (JPEG, PNG, ...).")
    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = " ".join(str(err).split())[:200] or type(err).__name__
        raise DataError(
            f"{path} is not an image PIL can read ({reason}); pass JPEG, PNG or other image files."
        ) from None
    bilinear = Image.Resampling.BILINEAR
    shorter, crop = preprocessing.get("resize_shorter"), preprocessing.get("center_crop")
    if shorter:
        w, h = image.size
        short, long = min(w, h), max(w, h)
        new_long = (int(shorter) * long) // short
        size = (int(shorter), new_long) if w <= h else (new_long, int(shorter))
        if size != image.size:
            image = image.resize(size, bilinear)
    if crop:
        w, h = image.size
        top, left = round((h - int(crop)) / 2), round((w - int(crop)) / 2)
        image = image.crop((left, top, left + int(crop), top + int(crop)))
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), bilinear)
    return np.asarray(image, np.uint8)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (probabilities summing to 1 per row)."""
    z = np.asarray(logits, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def predict_files(
    model_dir: str, paths: Sequence[str], *, top_k: int = 5, batch_size: int = 64
) -> list[tuple[str, list[tuple[str, float]]]]:
    """[(path, [(class name, probability), ...top_k])] for image files, in the given order.

    Every image is read before the model runs, so one bad file fails the whole call (one
    DataError) without partial output. Batches of at most `batch_size` images."""
    if not paths:
        raise ConfigError("no image given; usage: python -m ncl_jax.predict --model=DIR IMAGE...")
    if top_k < 1 or batch_size < 1:
        raise ConfigError(f"--top_k={top_k} and --batch_size={batch_size} must be >= 1.")
    model = ExportedModel(model_dir)
    images = np.stack([load_image(p, model.preprocessing, model.image_size) for p in paths])
    batches = range(0, len(images), batch_size)
    probs = np.concatenate([softmax(model.logits(images[i : i + batch_size])) for i in batches])
    k = min(top_k, probs.shape[1])
    results = []
    for path, row in zip(paths, probs, strict=True):
        order = np.argsort(-row, kind="stable")[:k]
        results.append((path, [(model.class_names[c], float(row[c])) for c in order]))
    return results


def format_line(path: str, top: Sequence[tuple[str, float]]) -> str:
    """`IMAGE: name p, name p, ...` with 4-decimal probabilities."""
    return f"{path}: " + ", ".join(f"{name} {p:.4f}" for name, p in top)
