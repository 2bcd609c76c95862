"""TFDS downloads with no network: every README builder gets as far as the network (so the pinned
environment can prepare it), and dataset.download="auto" fetches only the small public ones."""

from __future__ import annotations

import os
import socket
import time
import types

import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds

from ncl_jax import data
from ncl_jax.data import sources
from ncl_jax.errors import ConfigError, DataError
from tests.data_helpers import dataset_config
from tests.tiny import config_file

PUBLIC_BUILDERS = ("cifar10", "cifar100", "places365_small", "i_naturalist2018")


class NetworkReached(Exception):
    """Raised where a download would first send bytes to the network."""


@pytest.fixture
def no_network(monkeypatch):
    """Any HTTP request (requests, as TFDS uses) or raw socket connect raises NetworkReached."""

    def reached(*args, **kwargs):
        raise NetworkReached("a download reached the network")

    monkeypatch.setattr(requests.adapters.HTTPAdapter, "send", reached)
    monkeypatch.setattr(socket.socket, "connect", reached)


def reachable(url, **kwargs):
    """A successful requests.head (the reachability check before a download)."""
    return types.SimpleNamespace(url=url, status_code=200, close=lambda: None)


def quick_dataset_config(data_dir: str):
    """The dataset section of the README quickstart (configs/cifar10_lt.py:quick), unchanged."""
    cfg = config_file("cifar10_lt", "quick").dataset
    cfg.data_dir = data_dir
    return cfg


def fake_cifar10_download(root, per_class: int = 100):
    """A download_and_extract stand-in that serves a tiny extracted cifar-10-binary archive."""
    folder = os.path.join(root, "cifar-10-batches-bin")
    os.makedirs(folder)
    labels = np.repeat(np.arange(10), per_class)

    def record(label: int) -> bytes:  # one label byte, then a 3x32x32 image
        return bytes([label]) + bytes([label * 20]) * 3072

    for i, part in enumerate(np.array_split(labels, 5), 1):
        with open(os.path.join(folder, f"data_batch_{i}.bin"), "wb") as f:
            f.write(b"".join(record(int(label)) for label in part))
    with open(os.path.join(folder, "test_batch.bin"), "wb") as f:
        f.write(b"".join(record(label) for label in range(10)))
    with open(os.path.join(folder, "batches.meta.txt"), "w") as f:
        f.write("\n".join(f"class{c}" for c in range(10)))
    urls = []

    def download_and_extract(self, url):
        urls.append(url)
        return str(root)

    return download_and_extract, urls


# ------------------------------------------------------- the pinned environment can prepare them


@pytest.mark.parametrize("name", PUBLIC_BUILDERS)
def test_public_builder_prepares_up_to_the_network(tmp_path, no_network, name):
    """An ImportError (e.g. importlib_resources) or any other failure before the fetch fails."""
    builder = tfds.builder(name, data_dir=str(tmp_path / "data"))
    with pytest.raises(NetworkReached):
        builder.download_and_prepare(download_dir=str(tmp_path / "downloads"))


def test_imagenet_builder_gets_to_its_manual_dir_check(tmp_path, no_network):
    builder = tfds.builder("imagenet2012", data_dir=str(tmp_path / "data"))
    manual = tmp_path / "manual"
    with pytest.raises(AssertionError, match=f"Manual directory {manual} does not exist"):
        builder.download_and_prepare(
            download_dir=str(tmp_path / "downloads"),
            download_config=tfds.download.DownloadConfig(manual_dir=str(manual)),
        )


def test_offline_cifar10_jpeg_opens_without_network(no_network):
    root = os.environ.get("TFDS_DATA_DIR", "")
    if not os.path.isdir(os.path.join(root, "cifar10_jpeg")):
        pytest.skip(f"no offline cifar10_jpeg under TFDS_DATA_DIR={root!r}")
    builder = sources.open_builder(dataset_config(name="cifar10_jpeg", num_classes=10))
    assert builder.is_prepared() and builder.info.splits["train"].num_examples == 50_000


# ------------------------------------------------------------------ the download decision


@pytest.mark.parametrize(
    "name, download, expected",
    [
        ("cifar10", "auto", True),
        ("cifar100", "auto", True),
        ("imagenet2012", "auto", False),
        ("places365_small", "auto", False),
        ("i_naturalist2018", "auto", False),
        ("cifar10_jpeg", "auto", False),
        ("places365_small", "True", True),
        ("i_naturalist2018", True, True),
        ("cifar10", "false", False),
        ("cifar100", False, False),  # bool, as in config.json of runs from before "auto"
        ("cifar10", " AUTO ", True),
    ],
)
def test_download_decision(name, download, expected):
    assert sources.should_download(name, download) is expected


def test_quickstart_defaults_to_downloading_cifar10():
    cfg = quick_dataset_config("")
    assert (cfg.name, cfg.download) == ("cifar10", "auto")
    assert sources.should_download(cfg.name, cfg.download)


@pytest.mark.parametrize("value", ["yes", "", "None", "1"])
def test_bad_download_value_is_one_line_config_error(tmp_path, value):
    cfg = dataset_config(source="image_folder", image_root=str(tmp_path), download=value)
    with pytest.raises(ConfigError, match=r"dataset\.download=.* is not valid; use auto") as err:
        data.get_dataset_info(cfg)
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------ what the user sees


def test_quickstart_downloads_and_prepares_cifar10_by_default(tmp_path, no_network, monkeypatch):
    heads = []
    monkeypatch.setattr(requests, "head", lambda url, **kw: heads.append(url) or reachable(url))
    fake, urls = fake_cifar10_download(tmp_path / "fake")
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", fake)
    cfg = quick_dataset_config(str(tmp_path / "data"))
    info = data.get_dataset_info(cfg)
    assert urls == heads == ["https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"]
    assert tfds.builder("cifar10", data_dir=str(tmp_path / "data")).is_prepared()
    np.testing.assert_array_equal(info.class_counts, [100, 59, 35, 21, 12, 7, 4, 2, 1, 1])
    assert info.num_eval == 10


@pytest.mark.parametrize(
    "name, fragments",
    [
        ("places365_small", ("download=True", "31.4 GB", "not downloaded automatically")),
        ("i_naturalist2018", ("download=True", "not downloaded automatically")),
        ("imagenet2012", ("cannot be downloaded", "manual_dir")),
    ],
)
def test_large_or_manual_datasets_say_how_to_provide_them(tmp_path, no_network, name, fragments):
    cfg = dataset_config(name=name, data_dir=str(tmp_path))
    with pytest.raises(DataError) as err:
        data.get_dataset_info(cfg)
    message = str(err.value)
    assert "\n" not in message and str(tmp_path) in message and "TFDS_DATA_DIR" in message
    for fragment in fragments:
        assert fragment in message, message


def test_imagenet_with_download_true_says_what_manual_dir_needs(tmp_path, no_network):
    cfg = dataset_config(name="imagenet2012", num_classes=1000, data_dir=str(tmp_path))
    cfg.download = "True"
    with pytest.raises(DataError) as err:
        data.get_dataset_info(cfg)
    message = str(err.value)
    assert "\n" not in message and "ILSVRC2012_img_train.tar" in message, message


def _assert_offline_message(message: str, data_dir) -> None:
    assert "\n" not in message, message
    assert message.startswith(f"downloading TFDS 'cifar10' into {data_dir} failed"), message
    assert "TFDS_DATA_DIR" in message and "prepared cifar10/" in message, message


def test_unreachable_host_fails_fast_with_one_line(tmp_path, monkeypatch):
    """TFDS retries a failed connection for ~3 minutes; the reachability check answers at once."""

    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    def refused(*args, **kwargs):
        raise ConnectionRefusedError("network blocked by the test")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)  # the real requests/urllib3 stack runs
    monkeypatch.setattr(socket.socket, "connect", refused)
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        data.get_dataset_info(quick_dataset_config(str(tmp_path)))
    assert time.monotonic() - start < 30
    _assert_offline_message(str(err.value), tmp_path)
    assert "(www.cs.toronto.edu is unreachable: ConnectionError)" in str(err.value)


@pytest.mark.parametrize(
    "raised, offline",
    [
        (requests.exceptions.ConnectionError("Max retries exceeded (NameResolutionError)"), True),
        (tfds.download.DownloadError("Failed to get url x. HTTP code: 503."), True),
        (ValueError("corrupt archive"), False),
    ],
)
def test_failed_download_is_one_line(tmp_path, no_network, monkeypatch, raised, offline):
    def download_and_extract(self, url):
        raise raised

    monkeypatch.setattr(requests, "head", reachable)
    monkeypatch.setattr(tfds.download.DownloadManager, "download_and_extract", download_and_extract)
    with pytest.raises(DataError) as err:
        data.get_dataset_info(quick_dataset_config(str(tmp_path)))
    message = str(err.value)
    assert str(raised) in message and "\n" not in message
    if offline:
        _assert_offline_message(message, tmp_path)
    else:
        assert message.startswith(f"TFDS could not download/prepare 'cifar10' into {tmp_path}")
