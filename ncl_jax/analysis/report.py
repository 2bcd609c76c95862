"""Tabulates the runs under a directory: one row per setting, mean and std over seeds
(`ncl-report`).

Every workdir below the directory (any depth; a sweep's or hand-made) is one run. A run is
`finished` when training wrote result.json, `failed` when the sweep recorded a failure, else
`unfinished`; only finished runs are averaged, the others are counted in their own columns.
Runs belong to the same setting when their resolved configs agree on every field except the
training seed (`seed`), the subset seed (`dataset.subset_seed`) and the runtime-only fields
(`ncl_jax.config.resume_rules.RUNTIME_FIELDS`); the fields that differ between settings are
the table's first columns.

Columns of report.csv (stable; other tools read them), after the setting fields:
  runs, unfinished, failed, selection_split,
  params, forward_gflops, train_step_gflops: the model's cost recorded in result.json
    (ncl_jax/config/model_cost.py; empty for runs that predate it): the K experts' parameters,
    and XLA's GFLOPs per image (a multiply-add counts 2) of the ensemble's forward and of the
    whole train step,
  {when}_{model}_{metric}_mean and _std for
    when   = last (the final epoch) | best (the epoch that model's top-1 was best on
             selection_split, as the paper and the official code select: the test set for CIFAR)
    model  = ensemble (mean of the experts' logits) | single (the best expert of that run)
           | experts_mean (the mean over the experts: Fig. 4's "single"; at the best-single
             epoch for `best`)
    metric = top1 | many | medium | few (percent; empty when the test set has no such class)
           | worst_class | hmean | gmean (the lowest, harmonic and geometric mean per-class
             top-1, percent; the means are 0 when a class scores 0) | nll (mean negative
             log-likelihood, nats) | ece (15-bin expected calibration error, a fraction);
             ncl_jax/evaluation/tail_metrics.py; empty for runs that predate them
  std is the sample standard deviation over the finished runs (empty for fewer than two).

The program: `python -m ncl_jax.report` (ncl_jax/report.py).
"""

from __future__ import annotations

import csv
import io
import json
import os
import statistics

from flax import traverse_util

from ncl_jax.config.resume_rules import RUNTIME_FIELDS
from ncl_jax.errors import ConfigError
from ncl_jax.training.sweep import run_state

REPORT_MD = "report.md"
REPORT_CSV = "report.csv"
WHENS = ("last", "best")
MODELS = ("ensemble", "single", "experts_mean")
METRICS = ("top1", "many", "medium", "few", "worst_class", "hmean", "gmean", "nll", "ece")
SEED_FIELDS = ("seed", "dataset.subset_seed")
# Column: (result.json's model_cost key, divisor). Equal for every run of a setting.
COST_COLUMNS = {
    "params": ("params_ensemble", 1),
    "forward_gflops": ("flops_ensemble_forward", 1e9),
    "train_step_gflops": ("flops_train_step", 1e9),
}
# Shown in the printed/Markdown table (the CSV has every column).
SHOWN = (
    "last_ensemble_top1",
    "last_single_top1",
    "last_experts_mean_top1",
    "last_ensemble_many",
    "last_ensemble_medium",
    "last_ensemble_few",
    "best_ensemble_top1",
    "best_single_top1",
)


def find_runs(root: str) -> list[str]:
    """Every workdir (a directory holding config.json) below root, sorted."""
    if not os.path.isdir(root):
        raise ConfigError(f"{root} is not a directory; give the sweep's --workdir.")
    runs = sorted(d for d, _, files in os.walk(root) if "config.json" in files)
    if not runs:
        raise ConfigError(
            f"no runs under {root} (no config.json in any directory); train into it first "
            "(python -m ncl_jax.sweep or python -m ncl_jax.main)."
        )
    return runs


def _state(run: str) -> str:
    state = run_state(run)
    return "unfinished" if state == "pending" else state


def _scores(evaluation: dict) -> dict[str, dict]:
    """{model: {metric: value}} of one evaluation JSON (percent)."""
    experts = evaluation["experts"]
    mean = {
        m: (
            statistics.fmean(e[m] for e in experts)
            if all(e.get(m) is not None for e in experts)
            else None
        )
        for m in METRICS
    }
    return {
        "ensemble": evaluation["ensemble"],
        "single": evaluation["best_single"],
        "experts_mean": mean,
    }


def run_values(result: dict) -> dict[str, float | None]:
    """Flat {when_model_metric: value} of one result.json."""
    out = {}
    last = _scores(result["final"])
    best_evals = result.get("best_evals", {})
    best = {
        "ensemble": _scores(best_evals["ensemble"])["ensemble"]
        if "ensemble" in best_evals
        else None,
        "single": _scores(best_evals["single"])["single"] if "single" in best_evals else None,
        "experts_mean": _scores(best_evals["single"])["experts_mean"]
        if "single" in best_evals
        else None,
    }
    for model in MODELS:
        for metric in METRICS:
            out[f"last_{model}_{metric}"] = last[model].get(metric)
            out[f"best_{model}_{metric}"] = best[model].get(metric) if best[model] else None
    return out


def cost_values(result: dict) -> dict[str, float | None]:
    """The COST_COLUMNS of one result.json (None where it records no model cost)."""
    cost, out = result.get("model_cost") or {}, {}
    for name, (key, divisor) in COST_COLUMNS.items():
        value = cost.get(key)
        out[name] = value if value is None or divisor == 1 else value / divisor
    return out


def setting_key(config: dict) -> dict:
    """The fields that make two runs the same setting: all but the seeds and runtime-only
    fields."""

    flat = traverse_util.flatten_dict(config, sep=".")
    ignored = set(SEED_FIELDS) | set(RUNTIME_FIELDS)
    return {k: v for k, v in flat.items() if k not in ignored}


def collect(root: str) -> tuple[list[str], list[dict]]:
    """(setting field names, rows): one row per setting, aggregated over its seeds."""
    runs = find_runs(root)
    entries = []
    for run in runs:
        with open(os.path.join(run, "config.json")) as f:
            key = setting_key(json.load(f))
        state = _state(run)
        values = None
        if state == "finished":
            with open(os.path.join(run, "result.json")) as f:
                result = json.load(f)
            values = run_values(result)
            values["selection_split"] = result.get("selection_split", "")
            values.update(cost_values(result))
        entries.append((key, state, values))
    fields = sorted(
        {k for key, _, _ in entries for k in key if len({repr(e[0].get(k)) for e in entries}) > 1}
    )
    groups: dict[str, list] = {}
    for key, state, values in entries:
        groups.setdefault(json.dumps([key.get(f) for f in fields]), []).append((key, state, values))
    rows = []
    for members in groups.values():
        row = {f: members[0][0].get(f) for f in fields}
        done = [v for _, s, v in members if s == "finished"]
        row["runs"] = len(done)
        row["unfinished"] = sum(s == "unfinished" for _, s, _ in members)
        row["failed"] = sum(s == "failed" for _, s, _ in members)
        row["selection_split"] = done[0]["selection_split"] if done else ""
        for name in COST_COLUMNS:
            row[name] = next((v[name] for v in done if v[name] is not None), None)
        for when in WHENS:
            for model in MODELS:
                for metric in METRICS:
                    name = f"{when}_{model}_{metric}"
                    vals = [v[name] for v in done if v[name] is not None]
                    row[f"{name}_mean"] = statistics.fmean(vals) if vals else None
                    row[f"{name}_std"] = statistics.stdev(vals) if len(vals) > 1 else None
        rows.append(row)
    rows.sort(key=lambda r: [json.dumps(r[f]) for f in fields])
    return fields, rows


def columns(fields: list[str]) -> list[str]:
    stats = [
        f"{when}_{model}_{metric}_{stat}"
        for when in WHENS
        for model in MODELS
        for metric in METRICS
        for stat in ("mean", "std")
    ]
    return [*fields, "runs", "unfinished", "failed", "selection_split", *COST_COLUMNS, *stats]


def to_csv(fields: list[str], rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, columns(fields), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return out.getvalue()


def _cell(row: dict, name: str) -> str:
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    if mean is None:
        return "-"
    return f"{mean:.2f} ± {std:.2f}" if std is not None else f"{mean:.2f}"


def _cost_cell(value: float | None, name: str) -> str:
    if value is None:
        return "-"
    return f"{value / 1e6:.2f} M" if name == "params" else f"{value:.3g}"


def to_markdown(fields: list[str], rows: list[dict]) -> str:
    split = next((r["selection_split"] for r in rows if r["selection_split"]), "")
    header = [*fields, "runs", *COST_COLUMNS, *SHOWN]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        runs = str(row["runs"])
        if row["unfinished"] or row["failed"]:
            runs += f" (+{row['unfinished']} unfinished, {row['failed']} failed)"
        cost = [_cost_cell(row[n], n) for n in COST_COLUMNS]
        cells = [str(row[f]) for f in fields] + [runs] + cost + [_cell(row, n) for n in SHOWN]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Accuracy %, mean ± sample std over the finished runs (seeds). `last_*`: final epoch; "
        "`best_*`: the best epoch of that model, selected on "
        + (f"the `{split}` split" if split else "the evaluation split")
        + " (as the paper and the official code do). `single`: the best expert; "
        "`experts_mean`: the mean over the experts. `params`: the K experts' parameters; "
        "`*_gflops`: XLA's GFLOPs per image "
        "(a multiply-add counts 2) of the ensemble's forward and of a train step. report.csv "
        "has every column."
    )
    return "\n".join(lines) + "\n"


def write_report(root: str) -> tuple[str, str]:
    """Writes report.md and report.csv into root (atomically); returns the Markdown."""
    fields, rows = collect(root)
    markdown, table = to_markdown(fields, rows), to_csv(fields, rows)
    for name, text in ((REPORT_MD, markdown), (REPORT_CSV, table)):
        path = os.path.join(root, name)
        try:
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)
        except OSError as err:
            raise ConfigError(
                f"cannot write {path} ({err.strerror}); check the directory."
            ) from None
    return markdown, os.path.join(root, REPORT_MD)
