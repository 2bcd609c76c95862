"""Test setup: 8 fake CPU devices (set before JAX is imported), offline TFDS data, no TF GPU."""

import atexit
import collections
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
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the flags above)

jax.devices()  # starts the CPU backend with the fast-compile flags
os.environ["XLA_FLAGS"] = _PLAIN_XLA_FLAGS

# Persistent compilation caches, one pair per test process (each xdist worker), so that the
# many tests that train the same tiny steps compile each once (measured in docs/performance.md,
# Tests). Two caches,
# because JAX's cache key hashes XLA_FLAGS as the environment says when it compiles, which is
# the plain flags here while this process compiles with the fast-compile ones above: this
# process's executables must never be served to the programs the tests start. The programs
# read JAX_COMPILATION_CACHE_DIR from the environment they inherit; this process read it at
# `import jax`, above, before it was set.
_CACHES = tempfile.mkdtemp(prefix="ncl_jax_test_caches_")
atexit.register(shutil.rmtree, _CACHES, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", os.path.join(_CACHES, "in_process"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(_CACHES, "programs")

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


def pytest_collection_modifyitems(config, items):
    """Files with the most slow tests first, each file's tests in their own order. Under
    `--dist loadfile` (pyproject.toml) a file runs whole on one worker, in this order
    (`--no-loadscope-reorder` keeps xdist from sorting files by test count instead): the long
    end-to-end files start at once and the many short files fill the end, where one worker
    used to run tests/test_train.py alone for minutes while the other idled."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    first_seen = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: (-slow[item.path], first_seen[item.path]))
