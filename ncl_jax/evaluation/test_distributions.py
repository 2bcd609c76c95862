"""Test-agnostic evaluation (the SADE / BalPoE protocol): top-1 under test class distributions
from forward-long-tailed (the training prior's direction) through uniform to backward
(reversed).

Each distribution is an explicit subset of evaluation images (`distribution_sets`: seeded,
nested subsets of a TFDS evaluation split that follow the training subset's rule, or SADE's
list files). One pass over the images stores, per image, the argmax of every expert and of
the ensemble, raw and adjusted for each distribution's prior (`predictions`); each
distribution's accuracies are then counts over its index subset (`distribution_results`).
Exact, not a reweighting: every image of a subset is scored by the same network on the same
input as in a pass over that subset alone (evaluation uses running BatchNorm statistics and
no randomness).

The prior adjustment is Bayes' rule for a known test prior (BalPoE's correction): logits +
log(test prior) - log(the prior the logits were fit to); that prior is uniform for the
balanced losses (`loss.balanced`: BSCE, NCL, whose raw logits are already balanced) and the
training prior for plain CE.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from ncl_jax.core import metrics
from ncl_jax.core.train_step import (
    AXIS,
    eval_step,
    eval_sums,
    pmap_eval_counts_step,
    replicate,
    unreplicate,
)
from ncl_jax.data.sharding import eval_batch_for
from ncl_jax.data.splits import IndexedSplit
from ncl_jax.errors import ConfigError
from ncl_jax.evaluation.distribution_sets import list_file, read_list_files, select_subsets
from ncl_jax.evaluation.evaluate import eval_batches, evaluation_counts
from ncl_jax.evaluation.tail_metrics import evaluation_body


def prior_adjustments(subset_counts: np.ndarray, train_counts: np.ndarray, balanced: bool):
    """[D, C] float32 added to the logits for each distribution's known prior: log(test prior)
    - log(fit prior), fit prior uniform when `balanced` (balanced-softmax losses) else the
    training prior; -inf for a class the distribution lacks (never predicted)."""
    test = np.asarray(subset_counts, np.float64)
    with np.errstate(divide="ignore"):
        log_test = np.log(test / test.sum(-1, keepdims=True))
    train = np.asarray(train_counts, np.float64)
    log_fit = np.zeros_like(train) if balanced else np.log(train / train.sum())
    return (log_test - log_fit[None]).astype(np.float32)


def predictions(logits, adjustments, aggregation: str):
    """int32 [1 + D, K + 1, b]: the argmax of each expert and of the ensemble (by
    `aggregation`), for the raw logits, then for logits + adjustments[d] of each
    distribution. logits [K, b, C], adjustments [D, C]."""
    out = []
    for shift in [None, *adjustments]:
        z = logits if shift is None else logits + shift
        ensemble = jnp.argmax(metrics.ensemble_scores(z, aggregation), -1)
        out.append(jnp.concatenate([jnp.argmax(z, -1), ensemble[None]], 0))
    return jnp.stack(out).astype(jnp.int32)


def prediction_step(state, batch, adjustments, *, cfg):
    """The evaluation step that also keeps per-image predictions: (`eval_sums` psum'ed over
    devices, this device's `predictions` [1 + D, K + 1, b])."""
    logits = eval_step(state, batch, cfg=cfg)
    sums = jax.lax.psum(eval_sums(logits, batch, cfg=cfg), AXIS)
    return sums, predictions(logits, adjustments, cfg.eval.aggregation)


def pmap_prediction_step(cfg):
    """prediction_step under jax.pmap; adjustments [D, C] are broadcast to every device."""
    return jax.pmap(
        functools.partial(prediction_step, cfg=cfg), axis_name=AXIS, in_axes=(0, 0, None)
    )


class PredictionStore:
    """Per-image predictions of an evaluation pass, placed by their position in the split.

    Global batch g holds positions [g*B, (g+1)*B), process p the contiguous slice of B/P of
    them, split over its devices in order (data/sharding.py), so positions follow from the
    batch number. Device arrays are kept until `result`, which moves them once (and gathers
    over processes)."""

    def __init__(self, global_batch: int):
        self.global_batch = global_batch
        self._chunks: list = []

    def add(self, batch_number: int, preds) -> None:
        """preds [devices, 1 + D, K + 1, b] of this process for global batch `batch_number`."""
        self._chunks.append((batch_number, preds))

    def result(self, num_examples: int) -> np.ndarray:
        """int32 [1 + D, K + 1, num_examples] by position (padding dropped)."""
        process, processes = jax.process_index(), jax.process_count()
        per_process = self.global_batch // processes
        positions, values = [], []
        for batch_number, preds in self._chunks:
            preds = np.asarray(jax.device_get(preds))  # [d, M, K+1, b]
            values.append(np.moveaxis(preds, 0, 2).reshape(*preds.shape[1:3], -1))
            start = batch_number * self.global_batch + process * per_process
            positions.append(start + np.arange(per_process))
        positions, values = np.concatenate(positions), np.concatenate(values, axis=-1)
        if processes > 1:
            positions = multihost_utils.process_allgather(positions).reshape(-1)
            gathered = multihost_utils.process_allgather(values)  # [P, M, K+1, n]
            values = np.concatenate(list(gathered), axis=-1)
        keep = positions < num_examples
        out = np.zeros((*values.shape[:2], num_examples), np.int32)
        out[..., positions[keep]] = values[..., keep]
        return out


def run_prediction_pass(p_step, replicated_state, batches, adjustments, *, global_batch: int):
    """One pass: (summed `eval_sums` on the host, PredictionStore). adjustments [D, C]."""
    store, total = PredictionStore(global_batch), None
    adjustments = jnp.asarray(adjustments)
    for number, batch in enumerate(batches):
        sums, preds = p_step(replicated_state, batch, adjustments)
        total = sums if total is None else _accumulate(total, sums)
        store.add(number, preds)
    if total is None:
        raise ValueError("the evaluation split is empty; check dataset.eval_split.")
    return unreplicate(total), store


@jax.jit
def _accumulate(total, new):
    return jax.tree.map(jnp.add, total, new)


def distribution_results(
    preds: np.ndarray, labels: np.ndarray, subsets: dict, group_masks: dict
) -> dict:
    """{name: {num_examples, class_counts, experts, ensemble, best_single, prior_adjusted}}
    from per-image predictions preds [1 + D, K + 1, N] (raw, then one adjustment per
    distribution in `subsets` order), labels [N] and each distribution's positions.
    The bodies are `core.metrics.accuracy_summary` (top-1 and many/medium/few, percent);
    `prior_adjusted` is the same body for the logits adjusted by that distribution's prior."""
    labels = np.asarray(labels)
    num_classes = len(next(iter(group_masks.values())))
    out = {}
    for d, (name, positions) in enumerate(subsets.items()):
        y = labels[positions]
        totals = np.bincount(y, minlength=num_classes).astype(np.float64)

        def counts(p, y=y, positions=positions):
            hits = preds[p][:, positions] == y[None]  # [K + 1, n]
            return np.stack(
                [np.bincount(y, weights=h, minlength=num_classes) for h in hits.astype(float)]
            )

        out[name] = {
            **metrics.accuracy_summary(counts(0), totals, group_masks),
            "class_counts": totals.astype(int).tolist(),
            "prior_adjusted": metrics.accuracy_summary(counts(1 + d), totals, group_masks),
        }
    return out


def format_distributions(section: dict) -> str:
    """A table: one row per distribution, ensemble and best-single top-1, raw and adjusted."""
    header = f"{'distribution':<14}{'n':>7}{'ens':>8}{'ens adj':>9}{'single':>8}{'many':>8}"
    header += f"{'medium':>8}{'few':>8}"
    fmt = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"
    lines = [header, "-" * len(header)]
    for name, body in section["distributions"].items():
        ens = body["ensemble"]
        lines.append(
            f"{name:<14}{body['num_examples']:>7}{fmt(ens['top1'])} "
            f"{fmt(body['prior_adjusted']['ensemble']['top1'])}{fmt(body['best_single']['top1'])}"
            f"{fmt(ens['many'])}{fmt(ens['medium'])}{fmt(ens['few'])}"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- planning
FIT_PRIORS = {True: "uniform (balanced loss)", False: "training prior (plain CE)"}


@dataclasses.dataclass(frozen=True, eq=False)
class DistributionPlan:
    """Which images make each distribution, and the config of the pass that scores them."""

    names: tuple[str, ...]
    subsets: dict  # {name: int64 positions into the pass's evaluation split}
    labels: np.ndarray  # int64 [N]: the pass's labels by position
    config: Any  # the run's config, or a copy whose eval_list is the union of the list files
    shares_eval_pass: bool  # True: the run's own evaluation pass scores the distributions
    record: dict  # how the subsets were made, for the JSON

    def class_counts(self) -> np.ndarray:
        """[D, C] images per class of each distribution."""
        c = self.config.dataset.num_classes
        return np.stack([np.bincount(self.labels[p], minlength=c) for p in self.subsets.values()])


def check_request(config, names, list_dir: str | None) -> None:
    """ConfigError before any work when the dataset cannot give these distributions."""
    source = config.dataset.source
    if names is None:
        if list_dir:
            raise ConfigError("--test_distributions_dir needs --test_distributions.")
        return
    if source == "split_list" and not list_dir:
        raise ConfigError(
            "a split-list dataset takes its test distributions from list files: pass "
            "--test_distributions_dir=DIR holding SADE's <Dataset>_<distribution>.txt files."
        )
    if source not in ("split_list", "tfds"):
        raise ConfigError(
            f"test distributions need a TFDS or split-list dataset, not source={source!r}."
        )
    if source == "tfds" and list_dir:
        raise ConfigError(
            "--test_distributions_dir is for split-list datasets; TFDS test distributions are "
            "drawn from the evaluation split (leave the flag out)."
        )


@contextlib.contextmanager
def distribution_plan(config, names, *, seed: int = 0, list_dir: str | None = None):
    """Yields the DistributionPlan of `names` for a resolved run config: seeded per-class
    subsets of an in-memory TFDS evaluation split, or the union of SADE list files in
    `list_dir` (written to a temporary eval list, removed on exit). Raises ConfigError /
    DataError (one line) before any image is decoded."""
    check_request(config, names, list_dir)
    from ncl_jax.data import datasets  # lazy: TensorFlow, only where data is read

    cfg = config.dataset
    if cfg.source == "tfds":
        split = datasets.resolve(cfg).eval
        if not isinstance(split, IndexedSplit):
            raise ConfigError(
                f"dataset {cfg.name!r} streams its evaluation split; test distributions need "
                "an in-memory TFDS split (CIFAR) or a split-list dataset with list files."
            )
        labels = np.asarray(split.labels)
        if cfg.eval_max_examples > 0:
            labels = labels[: cfg.eval_max_examples]
        record = {
            "selection": f"seeded per-class subsets of the {cfg.eval_split!r} split",
            "seed": seed,
            "rule": "data.long_tailed_counts(n_max = smallest class, C, IF); backward reversed",
        }
        subsets = select_subsets(labels, names, seed, cfg.num_classes)
        yield DistributionPlan(names, subsets, labels, config, True, record)
        return
    paths, labels, subsets = read_list_files(list_dir, names, cfg.num_classes)
    workspace = tempfile.mkdtemp(prefix="ncl-test-distributions-")
    try:
        union = os.path.join(workspace, "union.txt")
        with open(union, "w") as f:
            f.writelines(f"{p} {y}\n" for p, y in zip(paths, labels, strict=True))
        pass_config = copy.deepcopy(config)
        pass_config.dataset.eval_list = union
        pass_config.dataset.eval_max_examples = 0
        datasets.resolve(pass_config.dataset)  # a listed image that is missing fails here
        record = {
            "selection": f"SADE list files in {os.path.abspath(list_dir)}",
            "seed": None,
            "files": {n: os.path.basename(list_file(list_dir, n)) for n in names},
        }
        yield DistributionPlan(names, subsets, labels, pass_config, False, record)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def section(plan: DistributionPlan, preds: np.ndarray, group_masks: dict, balanced: bool):
    """The `test_distributions` JSON of one run from its per-image predictions."""
    return {
        **plan.record,
        "names": list(plan.names),
        "prior_adjustment": "logits + log(test prior) - log(fit prior)",
        "fit_prior": FIT_PRIORS[bool(balanced)],
        "distributions": distribution_results(preds, plan.labels, plan.subsets, group_masks),
    }


def run_adjustments(plan: DistributionPlan, step_cfg) -> np.ndarray:
    """[D, C] prior adjustments of one run (its training counts and loss)."""
    return prior_adjustments(plan.class_counts(), step_cfg.class_counts, step_cfg.loss.balanced)


def evaluate_with_distributions(plan: DistributionPlan, config, step_cfg, state, group_masks):
    """The evaluation JSON of one run (`tail_metrics.evaluation_body` on its evaluation split)
    plus `test_distributions`: one pass over the evaluation split when it holds the
    distributions (TFDS), else that pass and one over the union of the list files."""
    replicated = replicate(state)
    p_step = pmap_prediction_step(step_cfg)
    adjustments = run_adjustments(plan, step_cfg)
    global_batch = eval_batch_for(config.eval_batch_size, jax.device_count())
    if plan.shares_eval_pass:
        sums, store = run_prediction_pass(
            p_step, replicated, eval_batches(config), adjustments, global_batch=global_batch
        )
    else:
        sums = evaluation_counts(pmap_eval_counts_step(step_cfg), replicated, eval_batches(config))
        _, store = run_prediction_pass(
            p_step, replicated, eval_batches(plan.config), adjustments, global_batch=global_batch
        )
    options = step_cfg.eval
    result = evaluation_body(sums, group_masks, taus=options.taus, aggregation=options.aggregation)
    preds = store.result(len(plan.labels))
    result["test_distributions"] = section(plan, preds, group_masks, step_cfg.loss.balanced)
    return result
