"""Training entry point.

  python -m ncl_jax.main --config=configs/cifar100_lt.py:if100,paper --workdir=runs/c100
  python -m ncl_jax.main --config=configs/cifar10_lt.py:quick --workdir=runs/quick \\
      --config.dataset.name=cifar10_jpeg
  python -m ncl_jax.main ... --workdir=runs/quick --step=386   # resume from an earlier step
  python -m ncl_jax.main ... --workdir=runs/quick --extend_to_epochs=8   # train a run longer
(`ncl-train` is the same program.)

Several processes (multi-host GPU / TPU pods, or the local CPU test) are joined with
jax.distributed.initialize: automatically under SLURM, with --distributed=on on TPU VMs (as
launch/tpu_pod.sh passes), or from the explicit flags below.
"""

from __future__ import annotations

import json
import os

import jax
from absl import flags, logging
from ml_collections import config_flags

from ncl_jax.cli import run_app, run_cli
from ncl_jax.config.validation import validate_fields
from ncl_jax.config.variants import resolve_config
from ncl_jax.perf.memory_fit import out_of_memory_error, out_of_memory_phase
from ncl_jax.training import host_devices
from ncl_jax.training.loop import train_and_evaluate


def _define_flags() -> None:
    config_flags.DEFINE_config_file(
        "config", None, "Config file, e.g. configs/cifar100_lt.py:if100,paper."
    )
    flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
    flags.DEFINE_integer(
        "step",
        None,
        "Resume from this checkpoint step (default: the newest readable, finite one); newer "
        "checkpoints are moved to WORKDIR/set_aside.",
    )
    flags.DEFINE_integer(
        "extend_to_epochs",
        None,
        "Train the run in --workdir on to this many epochs (sets num_epochs); refused when its "
        "schedule depends on num_epochs (cosine). See docs/training.md#extending-a-run.",
    )
    flags.DEFINE_bool(
        "take_over_lock",
        False,
        "Take WORKDIR/train.lock even when it names a run on another host that this host "
        "cannot check; only once you know that run has ended (docs/training.md).",
    )
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "host:port of process 0 (multi-process runs without a "
        "cluster environment that JAX detects by itself).",
    )
    flags.DEFINE_integer("num_processes", None, "Number of processes.")
    flags.DEFINE_integer("process_id", None, "Index of this process.")
    flags.DEFINE_enum(
        "distributed",
        "auto",
        ["auto", "on", "off"],
        "auto: initialise jax.distributed when a cluster or the flags "
        "above say there are several processes.",
    )


def _distributed_requested() -> bool:
    explicit = flags.FLAGS.coordinator_address is not None
    return flags.FLAGS.distributed == "on" or (
        flags.FLAGS.distributed == "auto" and (explicit or _cluster_detected())
    )


def _configure_cpu_devices(config) -> None:
    """One XLA device per core on CPU hosts (ncl_jax.training.host_devices); before JAX starts."""
    if _distributed_requested() and config.cpu_devices == -1:
        return  # per-process batch sizes are unknown here; the launchers set their own count
    host_devices.configure_for(config)


def _maybe_initialize_distributed() -> None:
    if not _distributed_requested():
        return
    # Cross-process collectives on CPU devices need gloo; set before any backend starts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=flags.FLAGS.coordinator_address,
        num_processes=flags.FLAGS.num_processes,
        process_id=flags.FLAGS.process_id,
    )


def _cluster_detected() -> bool:
    """A SLURM job with several tasks (TPU pods pass --distributed=on explicitly)."""
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def train_reporting_oom(
    config,
    workdir: str,
    *,
    resume_step: int | None = None,
    extend: bool = False,
    take_over_lock: bool = False,
) -> dict:
    """train_and_evaluate of a resolved config, with running out of device memory turned
    into one ConfigError that names the batch size that failed and one that fits
    (ncl_jax.perf.memory_fit.out_of_memory_error). Nothing is saved on that path."""
    try:
        return train_and_evaluate(
            config,
            workdir,
            resume_step=resume_step,
            extend=extend,
            take_over_lock=take_over_lock,
        )
    except RuntimeError as err:
        phase = out_of_memory_phase(err)
        if phase is None:
            raise
    # Past the except block the traceback, and with it the failed step's buffers, is freed.
    raise out_of_memory_error(config, phase=phase, workdir=workdir)


def main(argv) -> None:
    del argv

    def run():
        extend_to = flags.FLAGS.extend_to_epochs
        if extend_to is not None:
            flags.FLAGS.config.num_epochs = extend_to
        # The one resolution of this program: after the config file and every override.
        config = resolve_config(flags.FLAGS.config)
        validate_fields(config)  # before JAX starts and before the workdir is touched
        _configure_cpu_devices(config)
        _maybe_initialize_distributed()
        host_devices.check_platform(jax.default_backend())
        logging.info(
            "process %d/%d, %d local / %d global devices (%s)",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
            jax.default_backend(),
        )
        result = train_reporting_oom(
            config,
            flags.FLAGS.workdir,
            resume_step=flags.FLAGS.step,
            extend=extend_to is not None,
            take_over_lock=flags.FLAGS.take_over_lock,
        )
        if jax.process_index() == 0:
            print(json.dumps(result))

    run_cli(run)


def cli() -> None:
    """Console script `ncl-train`: the same as `python -m ncl_jax.main`."""
    run_app(main, define_flags=_define_flags, required=("config", "workdir"))


if __name__ == "__main__":
    cli()
