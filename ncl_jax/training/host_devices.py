"""Splits a CPU host into several XLA devices, so that one data-parallel step uses every core.

Why: XLA:CPU runs most operations of a ResNet-32 step (its YNNPACK convolutions, reductions,
transposes) on one thread each, and one after another, so on one device the other cores
mostly idle. The same pmapped step on one device per core runs the per-device shares side by
side (measured gain: docs/performance.md).
Batch statistics are synchronised over all devices (`sync_batch_stats`), so the update is
the same as on one device, up to float summation order; checkpoints do not depend on the
device count.

XLA reads the device count once, when JAX starts its CPU backend, so `configure` must run
before anything asks JAX for devices. A count the user already put in XLA_FLAGS always wins
(tests and the multi-process launcher set their own). On GPU/TPU hosts the CPU devices are
not used for compute, so the setting is harmless there.
"""

from __future__ import annotations

import os

from absl import logging
from jax._src import xla_bridge

from ncl_jax.errors import ConfigError

FLAG = "--xla_force_host_platform_device_count"
MIN_PER_DEVICE_BATCH = 16  # below this, per-device overheads outweigh the extra core


def available_cores() -> int:
    """Cores this process may run on (respects taskset / cgroup CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_count(
    requested: int, *, batch_sizes: tuple[int, ...], sync_batch_stats: bool, cores: int
) -> int:
    """How many CPU devices to create.

    requested > 0 is taken as given (validate_config later rejects batch sizes that do not
    split). requested == -1 (auto) picks the largest count <= cores that divides every batch
    size and leaves each device at least MIN_PER_DEVICE_BATCH examples; it stays at 1 when
    batch statistics are per device, since splitting would change what BatchNorm computes.
    """
    if requested > 0:
        return requested
    if requested != -1:
        raise ConfigError(f"cpu_devices={requested}: use -1 (one per core) or a count >= 1.")
    if not sync_batch_stats:
        return 1
    for count in range(max(1, cores), 1, -1):
        if all(b % count == 0 and b // count >= MIN_PER_DEVICE_BATCH for b in batch_sizes):
            return count
    return 1


def configure(
    requested: int, *, batch_sizes: tuple[int, ...], sync_batch_stats: bool = True
) -> int | None:
    """Puts the chosen device count into XLA_FLAGS; returns it, or None if left alone."""
    flags = os.environ.get("XLA_FLAGS", "")
    if FLAG in flags:
        return None

    if xla_bridge.backends_are_initialized():
        logging.warning("cpu_devices not applied: JAX had already started its backends.")
        return None
    count = choose_count(
        requested,
        batch_sizes=batch_sizes,
        sync_batch_stats=sync_batch_stats,
        cores=available_cores(),
    )
    if count > 1:
        os.environ["XLA_FLAGS"] = f"{flags} {FLAG}={count}".strip()
    return count


def configure_for(config) -> int | None:
    """`configure` with the fields of an ncl_jax config."""
    return configure(
        int(config.get("cpu_devices", -1)),
        batch_sizes=(int(config.batch_size), int(config.eval_batch_size)),
        sync_batch_stats=bool(config.sync_batch_stats),
    )


REQUIRE_ENV = "NCL_REQUIRE_PLATFORM"
_INSTALL = {"gpu": "requirements-gpu.txt", "tpu": "requirements-tpu.txt"}


def check_platform(backend: str, required: str | None = None) -> None:
    """Refuses to train on the wrong backend: the GPU/TPU launchers set NCL_REQUIRE_PLATFORM,
    and a CPU-only jaxlib (requirements.txt) would otherwise train on the CPU without a word.
    ConfigError naming the requirement file that installs the right JAX."""
    required = required if required is not None else os.environ.get(REQUIRE_ENV, "")
    if required and backend != required:
        fix = _INSTALL.get(required, f"the JAX build for {required}")
        raise ConfigError(
            f"this run was launched for {required.upper()} ({REQUIRE_ENV}={required}) but JAX "
            f"found only {backend.upper()} devices; install the accelerator build "
            f"(pip install -r {fix}) or unset {REQUIRE_ENV} to run on {backend.upper()}."
        )
