"""Throughput and memory of the full NCL train step (and of the input pipeline).

The step is the real pmapped `train_step` (all K experts, NCL loss, optimiser, and with MoCo
the key encoders, EMA and queue) on synthetic batches of the configured shape, so no dataset
is needed and `--mode=step` never imports TensorFlow (accelerator hosts may lack it). Each
configuration is compiled ahead of time (`compile_s`), warmed up, then timed over
`--steps` steps `--repeats` times; the median repeat is reported. Each configuration's model
cost (parameters and XLA's flops per image, `ncl_jax.config.model_cost`) follows in a second
table; `--mode=cost` prints only that one and compiles nothing. Prints the tables and, as its
last line, one JSON object describing the configuration as given (the first row), with every
row under "rows" and every cost under "model_cost".

The program: `python -m ncl_jax.benchmark` (ncl_jax/benchmark.py).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import json
import os
import resource
import statistics
import sys
import time
from typing import Any

import jax
import numpy as np

from ncl_jax import data
from ncl_jax.config import builders
from ncl_jax.config.model_cost import model_cost
from ncl_jax.config.validation import validate_config
from ncl_jax.config.variants import resolve_config
from ncl_jax.core.train_step import pmap_train_step, replicate
from ncl_jax.data.long_tail import long_tailed_counts
from ncl_jax.models import resolve_strategy
from ncl_jax.perf import input_step


@dataclasses.dataclass
class Row:
    """One timed configuration."""

    strategy: str
    num_experts: int
    moco: bool
    dtype: str
    batch_size: int
    ms_per_step: float
    img_per_s: float
    cpu_ms_per_step: float  # host CPU time per step, all threads (robust to other load)
    compile_s: float
    peak_rss_mb: float
    peak_device_mb: float | None
    repeats_ms: list[float]
    step_memory_mb: float | None = None  # XLA's per-device estimate for the compiled step


def rss_mb() -> tuple[float, float]:
    """(current, peak) resident memory of this process in MiB (peak = VmHWM)."""
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) / 1024
    if len(fields) == 2:
        return fields["VmRSS"], fields["VmHWM"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: no reset
    return peak, peak


def reset_peak_rss() -> None:
    """Resets VmHWM to the current RSS (Linux >= 4.0), so each row reports its own peak."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def device_peak_mb() -> float | None:
    """Peak device memory of the first local device (GPU/TPU); None where not reported."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except (AttributeError, NotImplementedError, RuntimeError):  # backends without stats
        stats = {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def compiled_memory_bytes(compiled) -> int | None:
    """Device bytes one call of a compiled (pmapped: per device) executable needs, from XLA's
    memory analysis: arguments + outputs + temporaries, less the donated bytes that outputs
    reuse. None where the backend or JAX version does not report it."""
    try:
        stats = compiled.memory_analysis()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if isinstance(stats, list | tuple):  # some versions give one entry per device
        stats = stats[0] if stats else None
    try:
        total = stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
        return int(total - getattr(stats, "alias_size_in_bytes", 0))
    except (AttributeError, TypeError):
        return None


def synthetic_counts(config) -> np.ndarray:
    """Long-tailed class counts of the configured profile (only the loss values use them)."""
    imbalance = config.dataset.imbalance_factor
    counts = long_tailed_counts(500, config.dataset.num_classes, max(float(imbalance), 1.0))
    return np.maximum(counts, 1).astype(np.float32)


def synthetic_batch(config, num_devices: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A global batch shaped as the input pipeline delivers it: [devices, per_device, ...]."""
    rng = np.random.default_rng(seed)
    per_device, size = config.batch_size // num_devices, config.dataset.image_size
    image = lambda: rng.normal(size=(num_devices, per_device, size, size, 3)).astype(np.float32)
    batch = {
        "image": image(),
        "label": rng.integers(0, config.dataset.num_classes, (num_devices, per_device)).astype(
            np.int32
        ),
    }
    if config.moco.enabled:
        batch["key_image"] = image()
    return batch


def time_step(
    config, *, steps: int, warmup: int, repeats: int, compiler_options: dict | None = None
) -> Row:
    """Compiles, warms up and times the pmapped train step of `config` on synthetic data.
    compiler_options: XLA options for this compilation only (ncl_jax.device_check's reduced
    CPU grid passes the fast-compile ones)."""
    devices = jax.local_devices()
    validate_config(config, num_devices=len(devices))
    counts = synthetic_counts(config)
    step_cfg = builders.make_step_config(
        config, class_counts=counts, steps_per_epoch=max(1, int(counts.sum()) // config.batch_size)
    )
    if hasattr(jax, "clear_caches"):  # earlier rows' executables would count in this row's peak
        jax.clear_caches()
    gc.collect()
    reset_peak_rss()
    state = replicate(builders.create_state(config, step_cfg), devices)
    batch = jax.device_put(synthetic_batch(config, len(devices)))
    p_step = pmap_train_step(step_cfg, donate=True, devices=devices)
    start = time.perf_counter()
    lowered = p_step.lower(state, batch)
    compiled = lowered.compile(compiler_options) if compiler_options else lowered.compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(state)
    timings, cpu = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        timings.append(1e3 * (time.perf_counter() - start) / steps)
        cpu.append(1e3 * (time.process_time() - cpu_start) / steps)
    loss_sum, loss_count = np.asarray(metrics["loss"]).sum(0)
    if not np.isfinite(loss_sum / loss_count):
        raise FloatingPointError(f"non-finite loss {loss_sum / loss_count} in the benchmark.")
    _, peak = rss_mb()
    ms = statistics.median(timings)
    step_bytes = compiled_memory_bytes(compiled)
    del state, compiled, p_step
    return Row(
        strategy=step_cfg.strategy,
        num_experts=config.model.num_experts,
        moco=bool(config.moco.enabled),
        dtype=config.model.dtype,
        batch_size=config.batch_size,
        ms_per_step=ms,
        img_per_s=config.batch_size / (ms / 1e3),
        cpu_ms_per_step=statistics.median(cpu),
        compile_s=compile_s,
        peak_rss_mb=peak,
        peak_device_mb=device_peak_mb(),
        repeats_ms=[round(t, 1) for t in timings],
        step_memory_mb=None if step_bytes is None else step_bytes / 2**20,
    )


def variants(config, *, experts: list[str], moco: str, strategies: list[str]) -> list[Any]:
    """The configurations to time, each resolved once after its overrides (`config` is the
    unresolved config of the command line); the first is the config as given (with the first
    option)."""
    moco_options = {
        "config": [bool(config.moco.enabled)],
        "on": [True],
        "off": [False],
        "both": [bool(config.moco.enabled), not config.moco.enabled],
    }[moco]
    ks = [int(k) for k in experts] or [config.model.num_experts]
    names = strategies or [config.model.expert_strategy]
    out = []
    for strategy, k, on in itertools.product(names, ks, moco_options):
        c = config.copy_and_resolve_references()
        c.model.expert_strategy, c.model.num_experts, c.moco.enabled = strategy, k, on
        out.append(resolve_config(c))
    return out


def time_pipeline(config, num_batches: int) -> dict[str, Any]:
    """Host input throughput for this config (imports TensorFlow)."""

    return data.benchmark_pipeline(
        config.dataset,
        global_batch_size=config.batch_size,
        num_batches=num_batches,
        two_views=bool(config.moco.enabled),
    )


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'strategy':<10}{'K':>3}{'moco':>6}{'dtype':>10}{'batch':>7}{'ms/step':>10}"
        f"{'img/s':>9}{'CPU ms':>9}{'compile s':>11}{'peak RSS MB':>13}{'device MB':>11}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        device = f"{r.peak_device_mb:11.0f}" if r.peak_device_mb is not None else f"{'-':>11}"
        lines.append(
            f"{r.strategy:<10}{r.num_experts:>3}{'on' if r.moco else 'off':>6}"
            f"{r.dtype:>10}{r.batch_size:>7}{r.ms_per_step:10.1f}{r.img_per_s:9.1f}"
            f"{r.cpu_ms_per_step:9.0f}"
            f"{r.compile_s:11.1f}{r.peak_rss_mb:13.0f}{device}"
        )
    return "\n".join(lines)


def model_costs(configs: list[Any]) -> list[dict[str, Any]]:
    """`model_cost` of each distinct (K, MoCo) pair among the resolved `configs` (the expert
    strategy and the compute dtype change no flop count), each with its pair."""
    costs: dict[tuple[int, bool], dict[str, Any]] = {}
    for c in configs:
        key = (c.model.num_experts, bool(c.moco.enabled))
        if key not in costs:
            validate_config(c, num_devices=1)  # costed as one device computing the global batch
            costs[key] = {"num_experts": key[0], "moco": key[1], **model_cost(c)}
    return list(costs.values())


def format_cost_table(costs: list[dict[str, Any]]) -> str:
    """Parameters in millions, and XLA's GFLOPs per image (a multiply-add counts 2 flops: the
    multiply-adds are half); the step and key-path numbers at the configured global batch."""
    header = (
        f"{'K':>3}{'moco':>6}{'M params':>10}{'ensemble':>10}{'keys':>8}"
        f"{'GFLOPs/img fwd':>16}{'ensemble fwd':>14}{'key path':>10}{'train step':>12}"
    )
    lines = [header, "-" * len(header)]
    giga = lambda flops: f"{flops / 1e9:.4g}" if flops is not None else "-"
    for c in costs:
        lines.append(
            f"{c['num_experts']:>3}{'on' if c['moco'] else 'off':>6}"
            f"{c['params_expert'] / 1e6:10.3f}{c['params_ensemble'] / 1e6:10.3f}"
            f"{c['params_key_encoders'] / 1e6:8.3f}{giga(c['flops_expert_forward']):>16}"
            f"{giga(c['flops_ensemble_forward']):>14}{giga(c['flops_key_forward']):>10}"
            f"{giga(c['flops_train_step']):>12}"
        )
    if costs:
        lines.append(
            "params in millions (one expert, the K experts, MoCo's key encoders); XLA's GFLOPs "
            "per image, a multiply-add counted as 2 flops; key path and train step at "
            f"batch_size {costs[0]['batch_size']}"
        )
    return "\n".join(lines)


def run(
    config,
    *,
    mode: str,
    steps: int,
    warmup: int,
    repeats: int,
    experts: list[str],
    moco: str,
    strategies: list[str],
    pipeline_batches: int,
) -> dict[str, Any]:
    """Runs the benchmark of the unresolved command-line `config` (one resolution per timed
    configuration, `variants`), prints the table and returns the summary (the JSON line)."""
    platform = jax.default_backend()
    summary: dict[str, Any] = {
        "platform": platform,
        "device_kind": jax.local_devices()[0].device_kind,
        "num_devices": jax.local_device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "batch_size": config.batch_size,
        "num_experts": config.model.num_experts,
        "dtype": config.model.dtype,
        "expert_strategy": resolve_strategy(config.model.expert_strategy, platform),
    }
    if mode in ("step", "all", "cost"):
        configs = variants(config, experts=experts, moco=moco, strategies=strategies)
        if mode != "cost":
            rows = []
            for c in configs:
                rows.append(time_step(c, steps=steps, warmup=warmup, repeats=repeats))
                print(format_table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            print(format_table(rows))
            summary.update(dataclasses.asdict(rows[0]))
            summary["expert_strategy"] = summary.pop("strategy")
            summary["rows"] = [dataclasses.asdict(r) for r in rows]
        summary["model_cost"] = model_costs(configs)
        print(format_cost_table(summary["model_cost"]))
    if mode in ("pipeline", "all"):
        try:
            result = time_pipeline(config, pipeline_batches)
        except (ImportError, OSError, ValueError) as err:
            if mode == "pipeline":
                raise
            result = {"skipped": " ".join(str(err).split())[:300]}
        summary["pipeline"] = result
        print("input pipeline:", json.dumps(result))
    if mode == "input_step":
        result = input_step.time_input_and_step(
            resolve_config(config), steps=steps, warmup=warmup, repeats=repeats
        )
        summary["input_step"] = result
        print(input_step.format_table(result))
    if "ms_per_step" not in summary:
        summary.update(ms_per_step=None, img_per_s=None, compile_s=None)
    summary.setdefault("peak_rss_mb", rss_mb()[1])
    return summary
