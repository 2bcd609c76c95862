"""The names a dataset config chooses from, without TensorFlow.

`config.validation.CHOICES` checks `dataset.source`, `dataset.download` and the three views
against these before TensorFlow starts (where it may not even be installed); the modules that
implement them (`datasets.py`, `sources.py`, `augment.py`) import them, so each list exists
once (tests/test_augment.py holds the views to the implemented ones).
"""

from __future__ import annotations

CACHE_SOURCE = "cache"  # a prepared cache (cache.py), read with numpy alone
SOURCES = ("tfds", "split_list", "image_folder", CACHE_SOURCE)  # dataset.source
# dataset.download, read case-insensitively ("auto", "True", False, ...).
DOWNLOAD_VALUES = ("auto", "true", "false")
# dataset.train_view / key_view / eval_view: the named views of augment.py.
VIEWS = (
    "cifar_autoaugment",
    "cifar_randaugment",
    "cifar_standard",
    "cifar_randaugment_no_cutout",  # ablations of the paper view: its steps but Cutout
    "cifar_cutout",  # ... and its steps but RandAugment
    "moco_cifar",
    "imagenet_randaugment",
    "places_sim",
    "cifar_test",
    "resize_center_crop",
)
