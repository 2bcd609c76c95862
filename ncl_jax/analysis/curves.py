"""Compares the logged training curves of runs (`ncl-curves`), e.g. float32 against bfloat16.

Reads the scalars each run wrote: to TensorBoard (clu's writer, one event file per run and
process), read with TensorBoard's own event reader, or, for a TensorFlow-free run, to
metrics.jsonl (ncl_jax.training.writers); aligns them on the steps all runs logged, and
prints per tag the largest absolute and relative difference of every run from the first, and
the final evaluation's top-1. With --plot, draws the curves (and their difference) to a PNG.

The program: `python -m ncl_jax.curves` (ncl_jax/curves.py).
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from ncl_jax.errors import ConfigError
from ncl_jax.training.writers import METRICS_FILE

DEFAULT_TAGS = ("train/loss",)


def read_scalars(workdir: str) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the workdir's TensorBoard event files and its
    metrics.jsonl (a TensorFlow-free run's). Raises ConfigError when the workdir has neither."""

    files = sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")))
    jsonl = os.path.join(workdir, METRICS_FILE)
    if not files and not os.path.isfile(jsonl):
        raise ConfigError(
            f"{workdir} has no TensorBoard event files and no {METRICS_FILE}; "
            "is it a training workdir?"
        )
    out: dict[str, dict[int, float]] = {}
    if files:
        _read_event_files(files, out)
    if os.path.isfile(jsonl):
        with open(jsonl) as f:
            for line in f:
                record = json.loads(line)
                step = int(record.pop("step"))
                for tag, value in record.items():
                    out.setdefault(tag, {})[step] = float(value)
    return out


def _read_event_files(files: list[str], out: dict[str, dict[int, float]]) -> None:
    # lazy: TensorBoard is missing where a TensorFlow-free run is read (metrics.jsonl only)
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    for path in files:
        events = event_accumulator.EventAccumulator(
            path, size_guidance={event_accumulator.TENSORS: 0, event_accumulator.SCALARS: 0}
        )
        events.Reload()
        tags = events.Tags()
        for tag in tags.get("tensors", []):
            for event in events.Tensors(tag):
                value = tensor_util.make_ndarray(event.tensor_proto)
                if value.size == 1 and np.issubdtype(value.dtype, np.number):
                    out.setdefault(tag, {})[int(event.step)] = float(value.reshape(()))
        for tag in tags.get("scalars", []):
            for event in events.Scalars(tag):
                out.setdefault(tag, {})[int(event.step)] = float(event.value)


def compare(curves: list[dict[int, float]]) -> dict:
    """Differences of each curve from the first on their common steps: {steps, max_abs,
    max_rel, mean_abs} per other curve (relative to |first|)."""
    common = sorted(set.intersection(*(set(c) for c in curves)))
    if not common:
        raise ConfigError("the runs logged this tag at no common step.")
    base = np.array([curves[0][s] for s in common])
    out = []
    for curve in curves[1:]:
        other = np.array([curve[s] for s in common])
        diff = np.abs(other - base)
        out.append(
            {
                "steps": len(common),
                "max_abs": float(diff.max()),
                "mean_abs": float(diff.mean()),
                "max_rel": float((diff / np.maximum(np.abs(base), 1e-12)).max()),
            }
        )
    return {"common_steps": common, "differences": out}


def plot(workdirs: list[str], scalars: list[dict], tag: str, path: str) -> str:
    """The tag's curve of every run, and each run's difference from the first, to a PNG."""
    # lazy: matplotlib costs a second to import and only the plot needs it
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 5.5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.4))
    base = scalars[0][tag]
    for workdir, runs in zip(workdirs, scalars, strict=True):
        steps = sorted(runs[tag])
        top.plot(steps, [runs[tag][s] for s in steps], label=os.path.basename(workdir), lw=1.5)
    for workdir, runs in zip(workdirs[1:], scalars[1:], strict=True):
        common = sorted(set(base) & set(runs[tag]))
        bottom.plot(
            common,
            [runs[tag][s] - base[s] for s in common],
            lw=1.2,
            label=f"{os.path.basename(workdir)} - {os.path.basename(workdirs[0])}",
        )
    top.set_ylabel(tag)
    top.legend(fontsize=8)
    top.grid(alpha=0.3)
    bottom.axhline(0, color="0.5", lw=0.8)
    bottom.set_ylabel("difference")
    bottom.set_xlabel("training step")
    bottom.legend(fontsize=8)
    bottom.grid(alpha=0.3)
    fig.savefig(path)
    return path
