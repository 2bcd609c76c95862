"""Images/s of each input pipeline alone and of input + train step, side by side in one run.

The train step of `config` is fed from the real dataset by `dataset.pipeline` = tfdata and =
device in turn, repeat by repeat, so that the drift of a shared machine hits both alike; each
pipeline is also timed alone (its batches produced and waited for, no step). This is what
`ncl-benchmark --mode=input_step` prints (docs/performance.md: the device pipeline on a CPU).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterator
from typing import Any

import jax
import numpy as np

from ncl_jax import data
from ncl_jax.config import builders
from ncl_jax.config.validation import validate_config
from ncl_jax.config.variants import replaced
from ncl_jax.core.train_step import pmap_train_step, replicate

PIPELINES = ("device", "tfdata")


def _batches(config) -> Iterator[dict[str, Any]]:
    """Training batches of `config` on the local devices, epoch after epoch (seed 0)."""
    for epoch in itertools.count():
        yield from data.train_iterator(
            config.dataset,
            global_batch_size=config.batch_size,
            seed=0,
            epoch=epoch,
            two_views=bool(config.moco.enabled),
            num_local_devices=jax.local_device_count(),
        )


def _rate(run, count: int, images_per_call: int) -> float:
    """Images/s of `count` calls of run(), dispatched ahead as the training loop does and
    waited for at the end (on CPU devices the device pipeline waits for each batch's views
    itself, `device_pipeline._waits_for_views`)."""
    start = time.perf_counter()
    jax.block_until_ready([run() for _ in range(count)])
    return count * images_per_call / (time.perf_counter() - start)


def time_input_and_step(
    config,
    *,
    steps: int,
    warmup: int,
    repeats: int,
    pipelines: tuple[str, ...] = PIPELINES,
) -> dict[str, dict[str, float]]:
    """{pipeline: {"input_img_per_s", "input_step_img_per_s"}}: medians over `repeats` of
    `steps` batches each, the pipelines alternating within each repeat. Input alone is timed
    right after input + step, so tf.data's figure includes draining what its prefetch buffer
    filled meanwhile: time enough steps that a few batches do not matter.

    `config` is resolved; each pipeline reads through a copy. Raises ConfigError/DataError
    as training would for a pipeline this dataset cannot use (e.g. device for a dataset read
    from files)."""
    configs = {p: replaced(config, {"dataset.pipeline": p}) for p in pipelines}
    first = configs[pipelines[0]]
    validate_config(first, num_devices=jax.device_count())
    info = data.get_dataset_info(first.dataset)
    step_cfg = builders.make_step_config(
        first,
        class_counts=info.class_counts,
        steps_per_epoch=data.steps_per_epoch(info, first.batch_size),
    )
    p_step = pmap_train_step(step_cfg, donate=True)
    state = replicate(builders.create_state(first, step_cfg))
    streams = {p: _batches(c) for p, c in configs.items()}

    def train(batch):
        nonlocal state
        state, metrics = p_step(state, batch)
        return metrics

    for stream in streams.values():  # compile the views and the step; fill the prefetch
        for _ in range(warmup):
            train(next(stream))
    rates: dict[str, dict[str, list[float]]] = {
        p: {"input_img_per_s": [], "input_step_img_per_s": []} for p in pipelines
    }
    batch = first.batch_size
    for _ in range(repeats):
        for p, stream in streams.items():
            r = rates[p]
            step = _rate(lambda s=stream: train(next(s)), steps, batch)
            r["input_step_img_per_s"].append(step)
            r["input_img_per_s"].append(_rate(lambda s=stream: next(s), steps, batch))
    loss = np.asarray(jax.device_get(train(next(streams[pipelines[0]]))["loss"]))
    loss_sum, loss_count = loss.sum(0)
    if not np.isfinite(loss_sum / loss_count):
        raise FloatingPointError(f"non-finite loss {loss_sum / loss_count} in the benchmark.")
    return {p: {k: statistics.median(v) for k, v in r.items()} for p, r in rates.items()}


def format_table(result: dict[str, dict[str, float]]) -> str:
    lines = [
        "| pipeline | input alone images/s | input + step images/s |",
        "|---|---|---|",
    ]
    for p, r in result.items():
        lines.append(f"| {p} | {r['input_img_per_s']:,.0f} | {r['input_step_img_per_s']:,.0f} |")
    return "\n".join(lines)
