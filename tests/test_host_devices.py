"""Splitting a CPU host into one XLA device per core: the choice, and when it is left alone."""

from __future__ import annotations

import pytest

from ncl_jax.errors import ConfigError
from ncl_jax.training import host_devices


def _auto(batch_sizes, cores, sync=True):
    return host_devices.choose_count(
        -1, batch_sizes=batch_sizes, sync_batch_stats=sync, cores=cores
    )


def test_auto_takes_one_device_per_core_when_the_batches_split():
    assert _auto((128, 256), cores=2) == 2
    assert _auto((128, 256), cores=8) == 8
    assert _auto((128, 256), cores=1) == 1


def test_auto_takes_the_largest_count_that_divides_every_batch():
    assert _auto((96, 256), cores=8) == 4  # 96 = 6 x 16 is out: 256 % 6
    assert _auto((120, 120), cores=7) == 6  # 7 does not divide 120
    assert _auto((127, 256), cores=2) == 1  # an odd batch stays on one device


def test_auto_keeps_at_least_min_per_device_batch_examples_per_device():
    assert host_devices.MIN_PER_DEVICE_BATCH == 16
    assert _auto((32, 128), cores=8) == 2
    assert _auto((16, 128), cores=2) == 1


def test_auto_stays_on_one_device_when_batch_statistics_are_per_device():
    # Splitting would change what BatchNorm normalises with; the run must not depend on cores.
    assert _auto((128, 256), cores=2, sync=False) == 1


def test_an_explicit_count_is_taken_as_given_and_nonsense_is_one_clear_error():
    assert host_devices.choose_count(3, batch_sizes=(128,), sync_batch_stats=False, cores=2) == 3
    with pytest.raises(ConfigError, match="cpu_devices=0"):
        host_devices.choose_count(0, batch_sizes=(128,), sync_batch_stats=True, cores=2)


def test_configure_writes_xla_flags_only_when_the_user_has_not_and_jax_has_not_started(monkeypatch):
    from jax._src import xla_bridge

    monkeypatch.setattr(host_devices, "available_cores", lambda: 4)
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_enable_fast_math=false")
    assert host_devices.configure(-1, batch_sizes=(64, 256)) == 4
    import os

    assert os.environ["XLA_FLAGS"] == (
        "--xla_cpu_enable_fast_math=false --xla_force_host_platform_device_count=4"
    )
    # The user's own count wins, whatever the config says.
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    assert host_devices.configure(2, batch_sizes=(64,)) is None
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=8"
    # Once JAX has started, the count can no longer change: leave the flags as they are.
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setattr(xla_bridge, "backends_are_initialized", lambda: True)
    assert host_devices.configure(2, batch_sizes=(64,)) is None
    assert "XLA_FLAGS" not in os.environ


def test_a_gpu_or_tpu_launch_refuses_to_train_on_the_cpu(monkeypatch):
    """launch/local_gpus.sh, the SLURM and TPU launchers set NCL_REQUIRE_PLATFORM: a CPU-only
    jaxlib is one error line naming the requirement file, not a silent CPU run."""
    with pytest.raises(ConfigError, match="pip install -r requirements-gpu.txt"):
        host_devices.check_platform("cpu", "gpu")
    with pytest.raises(ConfigError, match="requirements-tpu.txt"):
        host_devices.check_platform("cpu", "tpu")
    host_devices.check_platform("gpu", "gpu")
    monkeypatch.delenv(host_devices.REQUIRE_ENV, raising=False)
    host_devices.check_platform("cpu")  # no launcher, no requirement
    monkeypatch.setenv(host_devices.REQUIRE_ENV, "gpu")
    with pytest.raises(ConfigError, match="launched for GPU"):
        host_devices.check_platform("cpu")


def test_requirement_files_for_accelerators_pin_the_same_jax():
    import pathlib
    import re

    repo = pathlib.Path(__file__).resolve().parents[1]
    pinned = re.search(r"^jax==(\S+)", (repo / "requirements.txt").read_text(), re.M)[1]
    for name, extra in (("requirements-gpu.txt", "cuda12"), ("requirements-tpu.txt", "tpu")):
        text = (repo / name).read_text()
        assert "-r requirements.txt" in text and f"jax[{extra}]=={pinned}" in text
    for launcher in ("local_gpus.sh", "slurm_multinode.sbatch", "slurm_sweep.sbatch"):
        assert "NCL_REQUIRE_PLATFORM" in (repo / "launch" / launcher).read_text()
    assert "NCL_REQUIRE_PLATFORM=tpu" in (repo / "launch" / "tpu_pod.sh").read_text()
