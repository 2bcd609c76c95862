"""Per-epoch test accuracy of every run below a directory, as one CSV and learning-curve figures
(`ncl-report DIR --curves`): where along training one recipe passes another.

Reads the evaluation the training loop logs to TensorBoard every `eval_every_epochs`
(`eval/<model>/<metric>`, ncl_jax.core.metrics.eval_scalars), so it works on finished and
still-running runs alike. Runs are grouped into settings as `ncl-report` groups them (configs
equal up to the seeds and runtime-only fields); seeds are drawn as thin lines and their mean as a
thick one.

Columns of curves.csv (stable): setting, run, seed, subset_seed, epoch, step, then
{model}_{metric} for
  model  = ensemble | single (the best expert AT THAT EPOCH, as `eval/best_single` logs it)
         | experts_mean (mean over the experts)
  metric = top1 | many | medium | few (percent; empty where the test set has no such class).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import statistics
from typing import Any

import numpy as np

from ncl_jax.analysis.curves import read_scalars
from ncl_jax.analysis.report import METRICS, find_runs, setting_key
from ncl_jax.core.metrics import GROUPS
from ncl_jax.errors import ConfigError
from ncl_jax.evaluation.plots import new_figure, palette, save_figure

CURVES_CSV = "curves.csv"
TOP1_FIGURE = "curves_top1.png"
GROUPS_FIGURE = "curves_groups.png"
MODELS = ("ensemble", "single", "experts_mean")
_SEED_DIR = re.compile(r"^subset\d+_seed\d+$")
_EXPERT_TAG = re.compile(r"^eval/expert_(\d+)/top1$")


def run_rows(run: str, config: dict) -> list[dict]:
    """One row per evaluated epoch of one run, from its TensorBoard events. The epoch of a
    step is step / steps_per_epoch, with steps_per_epoch = the first evaluation's step /
    eval_every_epochs (the first evaluation follows epoch eval_every_epochs)."""
    try:
        scalars = read_scalars(run)
    except ConfigError:
        return []  # no event file yet: a run that has not started
    steps = sorted(scalars.get("eval/ensemble/top1", {}))
    if not steps:
        return []
    steps_per_epoch = steps[0] // int(config.get("eval_every_epochs", 1))
    experts = sorted(int(m[1]) for tag in scalars if (m := _EXPERT_TAG.match(tag)))
    rows = []
    for step in steps:
        row = {"epoch": step // steps_per_epoch, "step": step}
        for metric in METRICS:
            row[f"ensemble_{metric}"] = scalars.get(f"eval/ensemble/{metric}", {}).get(step)
            row[f"single_{metric}"] = scalars.get(f"eval/best_single/{metric}", {}).get(step)
            values = [scalars.get(f"eval/expert_{k}/{metric}", {}).get(step) for k in experts]
            known = [v for v in values if v is not None]
            row[f"experts_mean_{metric}"] = (
                statistics.fmean(known) if known and len(known) == len(values) else None
            )
        rows.append(row)
    return rows


def setting_label(root: str, run: str) -> str:
    """A short name of a run's setting: its path below root without the sweep's seed
    directory (subset<S>_seed<T>) and without a sweep's `default` setting directory."""
    rel = os.path.relpath(run, root)
    parts = [] if rel == "." else rel.split(os.sep)
    if parts and _SEED_DIR.match(parts[-1]):
        parts = parts[:-1]
    if parts and parts[-1] == "default":
        parts = parts[:-1]
    return "/".join(parts) or os.path.basename(os.path.abspath(root))


def collect(root: str) -> list[dict]:
    """Every evaluated epoch of every run below root, each row tagged with its setting (the
    label of the setting's first run), run, seed and subset seed."""
    labels: dict[str, str] = {}  # setting key -> label
    out = []
    for run in find_runs(root):
        with open(os.path.join(run, "config.json")) as f:
            config = json.load(f)
        key = json.dumps(setting_key(config), sort_keys=True, default=str)
        label = labels.setdefault(key, setting_label(root, run))
        meta = {
            "setting": label,
            "run": os.path.relpath(run, root),
            "seed": config.get("seed"),
            "subset_seed": config.get("dataset", {}).get("subset_seed"),
        }
        out += [{**meta, **row} for row in run_rows(run, config)]
    if not out:
        raise ConfigError(
            f"no run under {root} has logged an evaluation yet (eval/ensemble/top1); "
            "wait for the first epoch to finish."
        )
    return out


def columns() -> list[str]:
    metrics = [f"{model}_{metric}" for model in MODELS for metric in METRICS]
    return ["setting", "run", "seed", "subset_seed", "epoch", "step", *metrics]


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns(), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()


def _series(rows: list[dict]) -> dict[str, dict]:
    """{setting: {"runs": {run: rows}, "num_experts": K}} in first-seen order."""
    out: dict[str, dict] = {}
    for row in rows:
        entry = out.setdefault(row["setting"], {"runs": {}})
        entry["runs"].setdefault(row["run"], []).append(row)
    for entry in out.values():
        # K = 1 runs log one expert: their single, ensemble and mean curves are the same.
        first = next(iter(entry["runs"].values()))
        entry["several_experts"] = any(r["ensemble_top1"] != r["single_top1"] for r in first)
    return out


def mean_label(per_run: dict[str, dict[int, float]], seeds: dict[str, Any] | None = None) -> str:
    """The legend's note on the thick line of runs {run: {epoch: value}}: for one run, its
    seed (from `seeds`, {run: seed}; nothing when unknown), so that settings drawn from
    different seeds are told apart; for several, the number of seeds and, when a seed has
    epochs another lacks (a sweep still running), the epochs the mean covers (only those
    where every seed has a value)."""
    if len(per_run) < 2:
        seed = (seeds or {}).get(next(iter(per_run), None))
        return "" if seed is None else f", seed {seed}"
    common = sorted(set.intersection(*(set(p) for p in per_run.values())))
    label = f", mean of {len(per_run)} seeds"
    if not common:
        return label + " (no epoch in common)"
    if any(set(p) != set(common) for p in per_run.values()):
        label += f" over epochs {common[0]}-{common[-1]}"
    return label


def _draw(ax, series: dict, metric: str, *, since_epoch: int = 0) -> bool:
    """Every setting's ensemble (solid) and best expert (dashed; K > 1 only), seeds thin,
    mean over seeds thick. Returns whether anything had values."""
    from matplotlib.ticker import MaxNLocator  # lazy: as plots.new_figure

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    drawn = False
    for color, (label, entry) in zip(palette(len(series)), series.items(), strict=True):
        models = ("ensemble", "single") if entry["several_experts"] else ("ensemble",)
        for model in models:
            style = "-" if model == "ensemble" else "--"
            per_run = {}
            for run, rows in entry["runs"].items():
                points = {
                    r["epoch"]: r[f"{model}_{metric}"]
                    for r in rows
                    if r["epoch"] >= since_epoch and r[f"{model}_{metric}"] is not None
                }
                if points:
                    per_run[run] = points
            if not per_run:
                continue
            drawn = True
            for points in per_run.values():
                epochs = sorted(points)
                ax.plot(epochs, [points[e] for e in epochs], style, color=color, lw=0.7, alpha=0.45)
            common = sorted(set.intersection(*(set(p) for p in per_run.values())))
            name = (
                ""
                if not entry["several_experts"]
                else (" ensemble" if model == "ensemble" else " best expert")
            )
            seeds = mean_label(
                per_run, {run: rows[0]["seed"] for run, rows in entry["runs"].items()}
            )
            ax.plot(
                common,
                [np.mean([p[e] for p in per_run.values()]) for e in common],
                style,
                color=color,
                lw=2.0,
                label=f"{label}{name}{seeds}",
            )
    return drawn


def plot_top1(rows: list[dict], path: str) -> str:
    """Top-1 against epoch: every epoch, and the last quarter of training enlarged."""
    series = _series(rows)
    last = max(r["epoch"] for r in rows)
    fig = new_figure(11, 4.6)
    full, zoom = fig.subplots(1, 2, width_ratios=(3, 2))
    _draw(full, series, "top1")
    _draw(zoom, series, "top1", since_epoch=int(0.75 * last))
    full.set_title("test top-1 per epoch", fontsize=10)
    zoom.set_title(f"epochs {int(0.75 * last)}-{last}", fontsize=10)
    for ax in (full, zoom):
        ax.set_xlabel("epoch")
        ax.set_ylabel("top-1 %")
        ax.grid(alpha=0.3)
    full.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        "thin: one seed; thick: mean over seeds; dashed: the best expert at each epoch",
        fontsize=8,
        color="0.35",
    )
    return save_figure(fig, path)


def present_groups(rows: list[dict]) -> tuple[str, ...]:
    """The class groups (many / medium / few) with a value in any row, in that order; all
    three when none has one. CIFAR-10-LT has no few-shot class under either rule, and an
    empty panel would only say so."""
    groups = tuple(g for g in GROUPS if any(r[f"ensemble_{g}"] is not None for r in rows))
    return groups or GROUPS


def plot_groups(rows: list[dict], path: str) -> str:
    """Top-1 against epoch of each class group with test images, one panel each."""
    series = _series(rows)
    groups = present_groups(rows)
    fig = new_figure(4.4 * len(groups) + 0.2, 4.2)
    axes = np.atleast_1d(fig.subplots(1, len(groups), sharey=True))
    for ax, group in zip(axes, groups, strict=True):
        if not _draw(ax, series, group):
            ax.text(0.5, 0.5, f"no {group}-shot class\nin this test set", ha="center",
                    va="center", transform=ax.transAxes, color="0.4")  # fmt: skip
        ax.set_title(f"{group}-shot classes", fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("top-1 %")
    axes[0].legend(fontsize=7, loc="lower right")
    absent = [g for g in GROUPS if g not in groups]
    note = f"; no {' or '.join(absent)}-shot class in this test set" if absent else ""
    fig.suptitle(
        "thin: one seed; thick: mean over seeds; dashed: the best expert at each epoch; groups "
        f"by the run's group_rule{note}",
        fontsize=8,
        color="0.35",
    )
    return save_figure(fig, path)


def write_curves(root: str) -> list[str]:
    """Writes curves.csv and the two figures into root; returns their paths."""
    rows = collect(root)
    csv_path = os.path.join(root, CURVES_CSV)
    try:
        with open(csv_path + ".tmp", "w") as f:
            f.write(to_csv(rows))
        os.replace(csv_path + ".tmp", csv_path)
        return [
            csv_path,
            plot_top1(rows, os.path.join(root, TOP1_FIGURE)),
            plot_groups(rows, os.path.join(root, GROUPS_FIGURE)),
        ]
    except OSError as err:
        raise ConfigError(
            f"cannot write into {root} ({err.strerror}); check the directory."
        ) from None
