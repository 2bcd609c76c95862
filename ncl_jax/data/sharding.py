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
