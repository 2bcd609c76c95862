"""Test setup: 8 fake CPU devices (set before JAX is imported), offline TFDS data, no TF GPU."""

import ipaddress
import os
import pathlib
import socket

import pytest

from tests.xla_env import FAST_COMPILE

# In this process and the programs the tests start, compile without LLVM's expensive passes
# (tests/xla_env.py says why); 8 host devices unless XLA_FLAGS is set already.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS") or "--xla_force_host_platform_device_count=8", FAST_COMPILE]
)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the flags above)

jax.devices()  # starts the CPU backend with these flags

_REPO = pathlib.Path(__file__).resolve().parents[1]
_SHARED_TFDS = _REPO.parent / "shared" / "tensorflow_datasets"
if "TFDS_DATA_DIR" not in os.environ and _SHARED_TFDS.is_dir():
    os.environ["TFDS_DATA_DIR"] = str(_SHARED_TFDS)


@pytest.fixture
def identity_view(monkeypatch):
    """Data tests: replaces every augmentation view by pixels / 255 (data_helpers)."""
    from ncl_jax.data import pipeline
    from tests.data_helpers import identity_views

    monkeypatch.setattr(pipeline, "_make_view", identity_views)


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Tests never reach the network: a connect to anything but loopback raises at once
    (tests that exercise download paths replace the network with fakes)."""
    real_connect = socket.socket.connect

    def loopback_only(sock, address):
        host = address[0] if isinstance(address, tuple) else None
        try:
            allowed = host is None or host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            allowed = False
        if not allowed:
            raise ConnectionRefusedError(f"tests must not reach the network (connect {address})")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", loopback_only)
