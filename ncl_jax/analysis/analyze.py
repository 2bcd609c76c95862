"""Analysis of trained runs: the paper's figures, per-class accuracy, calibration, confusions
(the program: `python -m ncl_jax.analyze`).

Evaluates each run's checkpoint once on its evaluation split (all runs on the same batches, on
however many devices are here; see ncl_jax.evaluation.analysis_pass) and writes into --out:
  analysis.json                one object holding every plotted number (docs/analysis.md)
  per_class_top1.png           per-class top-1 against training images, head to tail
  group_top1.png               many / medium / few under the paper's and the official rule
  fig1_kl_per_class.png        KL between two networks per class (paper Fig. 1)
  fig5a_hardest_negative.png   score of the hardest negative class (paper Fig. 5a)
  fig5b_kl_groups.png          KL between two networks per class group (paper Fig. 5b)
  reliability.png              reliability diagrams and ECE
  test_distributions.png       top-1 against the test class distribution (--test_distributions)
  confusion_<run>.png          ensemble confusion matrix (C <= 100)
KL plots need a run with K >= 2 experts or two runs that differ only in their seed.
"""

from __future__ import annotations

import datetime
import math
import os
import re
import shutil
import tempfile
import time

import jax
from flax import traverse_util

from ncl_jax import data
from ncl_jax.cli import command_line
from ncl_jax.core.train_step import replicate
from ncl_jax.errors import ConfigError
from ncl_jax.evaluation import analysis_pass, plots
from ncl_jax.evaluation import test_distributions as test_distributions_module
from ncl_jax.evaluation.evaluate import eval_batches
from ncl_jax.evaluation.plots import setting_caption
from ncl_jax.training import host_devices
from ncl_jax.training.run_files import write_json_atomically
from ncl_jax.training.saved_runs import load_run, read_run_config, selection_note

SCHEMA_VERSION = 2  # 2: test_distributions (per run, with --test_distributions)
ANALYSIS_FILE = "analysis.json"
# Dataset fields that must agree for runs to be evaluated on the same batches.
_SAME_EVAL_DATA = (
    "source",
    "name",
    "eval_split",
    "eval_list",
    "eval_view",
    "image_size",
    "normalization",
    "num_classes",
    "eval_max_examples",
    "image_root",
)
# Config fields that do not make two runs different recipes.
_NOT_RECIPE = ("seed", "cpu_devices", "eval_tau", "eval_aggregation", "dataset.data_dir")


def prepare_out_dir(out: str, *, overwrite: bool) -> bool:
    """Makes --out (if missing) and checks that a file can be written in it, before any
    evaluation; refuses an --out that holds an earlier analysis unless --overwrite. Returns
    whether the directory was created here (so a failure later can remove it again)."""

    if os.path.exists(os.path.join(out, ANALYSIS_FILE)) and not overwrite:
        raise ConfigError(
            f"{out} already holds {ANALYSIS_FILE}; choose a new --out or pass --overwrite."
        )
    created = not os.path.isdir(out)
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        if created and os.path.isdir(out) and not os.listdir(out):
            os.rmdir(out)
        raise ConfigError(
            f"--out={out} cannot be written ({err.strerror}); choose a directory you can write."
        ) from None
    return created


def check_same_eval_data(configs: list, workdirs: list[str]) -> None:
    """Every compared run must be evaluated on the same images and classes."""

    first = configs[0].dataset
    for config, workdir in zip(configs[1:], workdirs[1:], strict=True):
        for field in _SAME_EVAL_DATA:
            if config.dataset.get(field) != first.get(field):
                raise ConfigError(
                    f"--compare run {workdir} has dataset.{field}={config.dataset.get(field)!r} "
                    f"but {workdirs[0]} has {first.get(field)!r}; compare runs evaluated on the "
                    "same dataset (analyze them separately otherwise)."
                )


def same_recipe(a, b) -> bool:
    """True when two configs differ at most in the seed (and evaluation-only fields)."""

    flat = lambda c: {
        k: v
        for k, v in traverse_util.flatten_dict(c.to_dict(), sep=".").items()
        if k not in _NOT_RECIPE
    }
    return flat(a) == flat(b)


def run_labels(workdirs: list[str]) -> list[str]:
    """File-name-safe, unique labels from the workdirs' base names."""
    labels = []
    for workdir in workdirs:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", os.path.basename(os.path.normpath(workdir)))
        label, n = base or "run", 2
        while label in labels:
            label, n = f"{base}_{n}", n + 1
        labels.append(label)
    return labels


def analyze(
    workdirs: list[str],
    out: str,
    *,
    checkpoint: str | int | None = None,
    aggregation: str | None = None,
    taus: tuple[float, ...] | None = None,
    overwrite: bool = False,
    test_distributions: tuple[str, ...] | None = None,
    distribution_seed: int = 0,
    distributions_dir: str | None = None,
    log=print,
) -> dict:
    """Runs the analysis of `workdirs` (the first is the main run) and writes --out.

    test_distributions (names; evaluation.test_distributions) add each run's test-agnostic
    section and its figure, drawn with distribution_seed or read from distributions_dir.
    Raises ConfigError / CheckpointError / DataError (one line each) before any evaluation
    for a bad --out, a workdir without config or checkpoint, runs on different datasets, a
    checkpoint that does not match its config, or test distributions the dataset cannot give
    (a missing list file included). Returns the analysis.json object."""

    started = time.perf_counter()
    taus = tuple(taus) if taus else None
    if taus is not None and taus[0] != 0:
        taus = (0.0, *taus)  # raw logits first, as in every evaluation JSON
    configs = [read_run_config(w, aggregation=aggregation, taus=taus) for w in workdirs]
    check_same_eval_data(configs, workdirs)
    test_distributions_module.check_request(configs[0], test_distributions, distributions_dir)
    created = prepare_out_dir(out, overwrite=overwrite)
    try:
        if not test_distributions:
            return _analyze(
                workdirs, configs, out, None, checkpoint=checkpoint, started=started, log=log
            )
        with test_distributions_module.distribution_plan(
            configs[0], test_distributions, seed=distribution_seed, list_dir=distributions_dir
        ) as plan:
            return _analyze(
                workdirs, configs, out, plan, checkpoint=checkpoint, started=started, log=log
            )
    except BaseException:
        if created and not os.listdir(out):  # leave no trace of a failed analysis
            os.rmdir(out)
        raise


def _analyze(workdirs, configs, out, plan, *, checkpoint, started, log) -> dict:
    host_devices.configure(
        int(configs[0].get("cpu_devices", -1)), batch_sizes=(int(configs[0].eval_batch_size),)
    )
    runs = [load_run(w, c, checkpoint) for w, c in zip(workdirs, configs, strict=True)]
    labels = run_labels(workdirs)
    info = runs[0].info
    global_batch = data.eval_batch_for(configs[0].eval_batch_size, jax.device_count())
    num_eval = info.num_eval
    if configs[0].dataset.eval_max_examples > 0:  # the pipeline evaluates the first ones
        num_eval = min(num_eval, int(configs[0].dataset.eval_max_examples))
    num_batches = math.ceil(num_eval / global_batch)
    log(
        f"analysing {len(runs)} run(s) on {num_eval} {info.name} images ({num_batches} "
        f"batches of {global_batch}) on {jax.device_count()} {jax.default_backend()} device(s)"
    )
    adjustments = None
    if plan is not None:
        adjustments = [test_distributions_module.run_adjustments(plan, r.step_cfg) for r in runs]
    shared = plan is not None and plan.shares_eval_pass
    result = analysis_pass.analysis_pass(
        [r.step_cfg for r in runs],
        [r.state for r in runs],
        eval_batches(configs[0]),
        num_batches=num_batches,
        progress=log,
        adjustments=adjustments if shared else None,
        global_batch=global_batch,
    )
    stores = result.predictions
    if plan is not None and not shared:  # list files: one more pass, over their images
        log(f"test distributions: a pass over the {len(plan.labels)} images of the list files")
        stores = [
            test_distributions_module.run_prediction_pass(
                test_distributions_module.pmap_prediction_step(r.step_cfg),
                replicate(r.state),
                eval_batches(plan.config),
                a,
                global_batch=global_batch,
            )[1]
            for r, a in zip(runs, adjustments, strict=True)
        ]
    class_names = plots.class_names_of(info)
    body = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        "runs": [],
        "kl_between_runs": [],
    }
    for r, (run, label, sums) in enumerate(zip(runs, labels, result.runs, strict=True)):
        summary = analysis_pass.summarize(
            sums,
            info=run.info,
            taus=run.step_cfg.eval.taus,
            class_names=class_names,
        )
        if plan is not None:
            summary["test_distributions"] = {
                "group_rule": run.config.group_rule,
                **test_distributions_module.section(
                    plan,
                    stores[r].result(len(plan.labels)),
                    run.info.group_masks(run.config.group_rule),
                    run.step_cfg.loss.balanced,
                ),
            }
        experts = [
            summary["groups"]["paper"][f"expert_{k}"]["top1"] for k in range(run.state.num_experts)
        ]
        body["runs"].append(
            {
                "label": label,
                "workdir": os.path.abspath(run.workdir),
                "checkpoint": {
                    "kind": run.kind,
                    "step": run.step,
                    "epoch": run.meta.get("epoch"),
                    "selection": selection_note(run.kind, run.config),
                },
                "dataset": info.name,
                "eval_split": run.config.dataset.eval_split,
                "num_classes": info.num_classes,
                "num_experts": run.state.num_experts,
                "aggregation": run.step_cfg.eval.aggregation,
                "taus": list(run.step_cfg.eval.taus),
                "class_names": class_names,
                "best_expert": int(max(range(len(experts)), key=experts.__getitem__)),
                **summary,
            }
        )
    totals = result.runs[0]["totals"]
    for (i, j), kl in sorted(result.kl_between_runs.items()):
        body["kl_between_runs"].append(
            {
                "runs": [labels[i], labels[j]],
                "same_recipe": same_recipe(runs[i].config, runs[j].config),
                **analysis_pass.kl_between(kl, totals, info),
            }
        )
    plot_start = time.perf_counter()
    staging = tempfile.mkdtemp(prefix=".analysis-", dir=out)
    try:
        written = plots.plot_all(body, staging)
        body["timing"] = {
            "pass_s": round(result.seconds, 2),
            "plots_s": round(time.perf_counter() - plot_start, 2),
            "total_s": round(time.perf_counter() - started, 2),
        }
        write_json_atomically(os.path.join(staging, ANALYSIS_FILE), body)
        for path in [*written, os.path.join(staging, ANALYSIS_FILE)]:
            os.replace(path, os.path.join(out, os.path.basename(path)))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(format_summary(body))
    log(
        f"wrote {ANALYSIS_FILE} and {len(written)} figures to {out} "
        f"({body['timing']['total_s']:.1f} s)"
    )
    return body


def format_summary(body: dict) -> str:
    """A table of the headline numbers of each run."""
    header = f"{'run':<18}{'top1':>8}{'many':>8}{'medium':>8}{'few':>8}{'ECE %':>8}{'HN mean':>9}"
    lines = [header, "-" * len(header)]
    fmt = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"
    for run in body["runs"]:
        ens = run["groups"]["paper"]["ensemble"]
        lines.append(
            f"{run['label'][:17]:<18}{fmt(ens['top1'])}{fmt(ens['many'])}{fmt(ens['medium'])}"
            f"{fmt(ens['few'])}{fmt(100 * run['ece']['ensemble'])}"
            f"{run['hardest_negative']['mean']['ensemble']:9.3f}"
        )
    lines.append("(ensemble; groups by the paper rule; HN: hardest negative probability)")

    lines.append(setting_caption(body))
    for tau in list(body["runs"][0]["logit_adjusted"])[1:]:
        lines.append(
            f"logit adjustment tau={tau}: "
            + ", ".join(
                f"{run['label']} {run['logit_adjusted'][tau]['ensemble']:.2f}"
                for run in body["runs"]
            )
        )
    for run in body["runs"]:
        if run.get("test_distributions"):
            section = run["test_distributions"]["distributions"]
            lines.append(
                f"{run['label']} ensemble top-1 raw / prior-adjusted: "
                + ", ".join(
                    f"{name} {d['ensemble']['top1']:.2f}/"
                    f"{d['prior_adjusted']['ensemble']['top1']:.2f}"
                    for name, d in section.items()
                )
            )
    pairs = body["runs"][0]["confused_pairs"] or []
    if pairs:
        lines.append(
            f"most confused ({body['runs'][0]['label']}): "
            + ", ".join(f"{p['true_name']}->{p['predicted_name']} {p['count']}" for p in pairs[:5])
        )
    return "\n".join(lines)
