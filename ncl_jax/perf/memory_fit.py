"""Running out of device memory: recognising it and naming a batch size that fits.

Used by training (`ncl_jax.main`: one `error:` line instead of XLA's allocation traceback)
and by `ncl_jax.device_check` (a row that does not fit is recorded with the largest batch
that does). A fitting batch is found by compiling the step for halved batches on abstract
shapes and comparing XLA's memory estimate with the device's `bytes_limit`: nothing is
allocated, so the search cannot run out of memory itself.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from collections.abc import Callable

import jax

from ncl_jax.config import builders
from ncl_jax.core.train_step import pmap_train_step
from ncl_jax.errors import ConfigError
from ncl_jax.evaluation.evaluate import evaluation_counts
from ncl_jax.perf import benchmark

MEMORY_FRACTION = 0.95  # of bytes_limit a step may use by XLA's estimate (fragmentation)


def is_out_of_memory(err: BaseException) -> bool:
    """Whether `err` is XLA's allocation failure (XlaRuntimeError / JaxRuntimeError, both
    RuntimeErrors, whose message holds RESOURCE_EXHAUSTED or "out of memory")."""
    text = str(err)
    return isinstance(err, RuntimeError) and (
        "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()
    )


@dataclasses.dataclass(frozen=True)
class Fit:
    """A batch size that fits: how it was found ("measured" in this run, "xla_estimate" of
    its compiled step against the device limit, or "halved" where no estimate exists, e.g.
    on the CPU), and XLA's estimate in bytes where there is one. batch_size None: none of the
    halvings fits by the estimate."""

    batch_size: int | None
    how: str
    needed_bytes: int | None = None
    limit_bytes: int | None = None


def fitting_batch_size(
    failed: int,
    *,
    needed_bytes: Callable[[int], int | None] | None,
    limit_bytes: int | None,
    multiple: int = 1,
    fraction: float = MEMORY_FRACTION,
) -> Fit:
    """The largest of failed/2, failed/4, ... (rounded down to a multiple of `multiple`, the
    device count) whose step fits in `fraction` of the device's `limit_bytes` by XLA's
    estimate `needed_bytes(batch)` (compiles only; nothing is allocated, so the search cannot
    run out of memory itself). Where the limit or the estimate is unknown (CPU), suggests
    half the batch ("halved")."""
    candidates = []
    batch = failed
    while True:
        batch //= 2
        batch -= batch % multiple
        if batch < max(multiple, 1):
            break
        candidates.append(batch)
    if not candidates:
        return Fit(None, "none_smaller", None, limit_bytes)
    if limit_bytes is None or needed_bytes is None:
        return Fit(candidates[0], "halved", None, limit_bytes)
    need = None
    for batch in candidates:
        need = needed_bytes(batch)
        if need is None:
            return Fit(batch, "halved", None, limit_bytes)
        if need <= fraction * limit_bytes:
            return Fit(batch, "xla_estimate", need, limit_bytes)
    return Fit(None, "xla_estimate", need, limit_bytes)


def device_bytes_limit() -> int | None:
    """Bytes the first local device's allocator may use (GPU/TPU); None where not reported
    (CPU, or a JAX whose Device.memory_stats is missing or returns None)."""

    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    limit = stats.get("bytes_limit")
    return None if limit is None else int(limit)


def step_memory_bytes(config) -> int | None:
    """XLA's per-device memory estimate of the pmapped train step of `config` (arguments +
    outputs + temporaries - donated), from compiling it on abstract shapes: nothing is
    allocated on the device. None where the backend gives no memory analysis."""

    devices = jax.local_devices()
    n = len(devices)
    per_device = config.batch_size // jax.device_count()  # global batch over all processes
    counts = benchmark.synthetic_counts(config)
    step_cfg = builders.make_step_config(
        config, class_counts=counts, steps_per_epoch=max(1, int(counts.sum()) // config.batch_size)
    )
    replicated = lambda x: jax.ShapeDtypeStruct((n, *x.shape), x.dtype)
    state = jax.tree.map(replicated, builders.abstract_state(config, step_cfg))
    size = config.dataset.image_size
    image = jax.ShapeDtypeStruct((n, per_device, size, size, 3), "float32")
    batch = {"image": image, "label": jax.ShapeDtypeStruct((n, per_device), "int32")}
    if config.moco.enabled:
        batch["key_image"] = image
    lowered = pmap_train_step(step_cfg, devices=devices).lower(state, batch)
    return benchmark.compiled_memory_bytes(lowered.compile())


def out_of_memory_phase(err: BaseException) -> str | None:
    """None unless `err` is an out-of-memory error; then "eval" if it was raised inside the
    evaluation (ncl_jax.evaluate.evaluation_counts), else "train"."""
    if not is_out_of_memory(err):
        return None

    tb = err.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is evaluation_counts.__code__:
            return "eval"
        tb = tb.tb_next
    return "train"


def out_of_memory_error(config, *, phase: str, workdir: str | None = None) -> ConfigError:
    """The one-line error for a training run that ran out of device memory: the batch size
    that failed and one that fits (`fitting_batch_size`; the train step's memory is estimated
    by compiling it, the evaluation's is not). Call it after leaving the `except` block, so
    that the failed step's buffers are freed first. `config` is resolved. Writes nothing."""
    gc.collect()
    field = "batch_size" if phase == "train" else "eval_batch_size"
    failed = int(config[field])

    def needed(batch: int) -> int | None:
        smaller = config.copy_and_resolve_references()
        smaller.batch_size = batch
        try:
            return step_memory_bytes(smaller)
        except Exception:  # noqa: BLE001 - no estimate: the message falls back to half
            return None

    devices = jax.device_count()  # the batch sizes are global
    fit = fitting_batch_size(
        failed,
        needed_bytes=needed if phase == "train" else None,
        limit_bytes=device_bytes_limit(),
        multiple=devices,
    )
    where = "while training" if phase == "train" else "while evaluating"
    head = f"{field}={failed} does not fit in device memory ({where}, RESOURCE_EXHAUSTED)"
    if fit.batch_size is None:
        why = (
            f"it is already the smallest that splits over {devices} devices"
            if fit.how == "none_smaller"
            else f"by XLA's estimate no smaller one that splits over {devices} devices fits"
        )
        return ConfigError(f"{head}, and {why}: use a smaller model or more devices.")
    if fit.how == "xla_estimate":
        why = (
            f"fits by XLA's estimate ({fit.needed_bytes / 2**30:.1f} GiB of "
            f"{fit.limit_bytes / 2**30:.1f} GiB per device)"
        )
    elif phase != "train":
        why = "should fit (half; the evaluation's memory is not estimated)"
    elif fit.limit_bytes is None:
        why = "should fit (half; this device reports no memory limit to check it against)"
    else:
        why = "should fit (half; XLA gave no memory estimate to check it against)"
    fresh = ""
    if workdir and os.path.isdir(os.path.join(workdir, "checkpoints")):
        if any(os.scandir(os.path.join(workdir, "checkpoints"))):
            fresh = f" in a new --workdir ({workdir} holds checkpoints of {field}={failed})"
    return ConfigError(
        f"{head}; {field}={fit.batch_size} {why}: rerun with "
        f"--config.{field}={fit.batch_size}{fresh}."
    )
