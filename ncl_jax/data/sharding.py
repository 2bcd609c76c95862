"""How a global batch is split over processes and devices (pure numpy, no TensorFlow).

Global batch g of an epoch holds the examples at positions [g*B, (g+1)*B) of that epoch's
order. Process p loads the contiguous slice [g*B + p*B/P, g*B + (p+1)*B/P) and splits it
over its D local devices, so concatenating the processes' [D, b] batches in process order
gives the same global batch for any (P, D) with P*D*b = B.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ncl_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Shard:
    """This process's share of global batches first_step..last_step-1 (see module doc)."""

    global_batch: int
    num_devices: int
    process: int
    processes: int
    first_step: int = 0
    last_step: int = 0

    @property
    def per_process(self) -> int:
        return self.global_batch // self.processes

    @property
    def num_steps(self) -> int:
        return self.last_step - self.first_step

    def positions(self) -> np.ndarray:
        """Epoch positions this process loads, in order."""
        steps = np.arange(self.first_step, self.last_step, dtype=np.int64)[:, None]
        offsets = self.process * self.per_process + np.arange(self.per_process, dtype=np.int64)
        return (steps * self.global_batch + offsets[None, :]).reshape(-1)

    def owns(self, position):
        """Whether an epoch position (int, array or tensor) is in this process's slice."""
        return (position % self.global_batch) // self.per_process == self.process


def steps_per_epoch(info, global_batch_size: int) -> int:
    """Training steps per epoch of a DatasetInfo: the remainder that does not fill a global
    batch is dropped. Raises ConfigError for a batch size below 1."""
    if global_batch_size < 1:
        raise ConfigError(f"batch size {global_batch_size} must be >= 1.")
    return info.num_train // global_batch_size


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """int64 [num_examples]: the example at each position of epoch `epoch`, a permutation
    seeded by (seed, epoch) alone, so every pipeline, process and device count agrees."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def train_epoch_shard(
    shard: Shard, *, num_train: int, seed: int, epoch: int, start_step: int
) -> Shard:
    """`shard` limited to the steps start_step..steps_per_epoch-1 of one training epoch.
    Raises ConfigError for a negative seed or epoch, a global batch larger than the training
    set, or a start_step outside the epoch (every pipeline checks the same way)."""
    if seed < 0 or epoch < 0:
        raise ConfigError(f"seed={seed} and epoch={epoch} must be >= 0.")
    steps = num_train // shard.global_batch
    if steps == 0:
        raise ConfigError(
            f"batch size {shard.global_batch} exceeds the {num_train} training images "
            "of one epoch; lower --config.batch_size."
        )
    if not 0 <= start_step <= steps:
        raise ConfigError(f"start_step={start_step} is outside [0, {steps}] for this epoch.")
    return dataclasses.replace(shard, first_step=start_step, last_step=steps)


def make_shard(global_batch_size: int, num_devices: int, process: int, processes: int) -> Shard:
    """Validates the process/device split of a global batch."""
    if num_devices < 1 or processes < 1 or not 0 <= process < processes:
        raise ConfigError(
            f"invalid sharding: num_local_devices={num_devices}, process_index={process}, "
            f"process_count={processes}."
        )
    if global_batch_size < 1 or global_batch_size % (processes * num_devices):
        raise ConfigError(
            f"global batch size {global_batch_size} is not divisible by process_count * "
            f"num_local_devices = {processes} * {num_devices}; use a multiple of "
            f"{processes * num_devices}."
        )
    return Shard(global_batch_size, num_devices, process, processes)


def eval_batch_for(eval_batch_size: int, num_devices: int) -> int:
    """The global evaluation batch: eval_batch_size rounded up to a multiple of the global
    device count. Evaluation pads and masks its last batch anyway, so any device count works
    and gives the same accuracies."""
    return -(-eval_batch_size // num_devices) * num_devices
