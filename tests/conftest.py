"""Test setup: 8 fake CPU devices (set before JAX is imported), offline TFDS data, no TF GPU."""

import ipaddress
import os
import pathlib
import shutil
import socket
import tempfile

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# In this process, compile without LLVM's expensive passes: the tests' programs are tiny, so
# compiling dominates their time and unoptimised code runs them just as fast. The flags are
# read once, when JAX's CPU backend starts (below); subprocesses get the plain flags back.
_PLAIN_XLA_FLAGS = os.environ["XLA_FLAGS"]
os.environ["XLA_FLAGS"] = " ".join(
    [
        _PLAIN_XLA_FLAGS,
        "--xla_backend_optimization_level=0",
        "--xla_llvm_disable_expensive_passes=true",
    ]
)
# Persistent compilation caches for the whole test session, made by the first process that
# loads this file (the xdist controller) and inherited by the workers and by every training
# subprocess they start: the slow tests train the same smoke steps many times, and compiling
# them was much of each run's time. Two caches: JAX keys an entry by the program, the
# XLA_FLAGS of the environment and its version, and this process compiles with flags (below)
# that it takes out of the environment again, so its entries must not reach a subprocess.
_CACHE_ENV = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = None
if not os.environ.get("NCL_JAX_TEST_CACHES"):
    _OWN_CACHE = tempfile.mkdtemp(prefix="ncl_jax_test_caches_")
    os.environ["NCL_JAX_TEST_CACHES"] = _OWN_CACHE
    os.environ.setdefault(_CACHE_ENV, os.path.join(_OWN_CACHE, "subprocesses"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the flags above)

jax.devices()  # starts the CPU backend with the fast-compile flags
jax.config.update(
    "jax_compilation_cache_dir", os.path.join(os.environ["NCL_JAX_TEST_CACHES"], "in_process")
)
os.environ["XLA_FLAGS"] = _PLAIN_XLA_FLAGS

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


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
