"""The analysis pass: one evaluation of each run, reduced on device to what `analyze` reports.

Per batch and run, a pmapped step computes the experts' logits and reduces them at once to
per-class and per-bin sums (ncl_jax.core.metrics: correct counts per adjustment tau, symmetric KL
between expert pairs, calibration bins, the hardest negative's histogram, the ensemble's
confusion matrix), psum'ed over devices and accumulated on device; only the ensemble's
log-probabilities of the current batch stay on device to compare runs. The host receives the
sums once, at the end, and `summarize` turns them into the `analysis.json` body of one run.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ncl_jax.core import metrics
from ncl_jax.core.train_step import AXIS, eval_step, replicate, unreplicate
from ncl_jax.data.long_tail import GROUP_RULES
from ncl_jax.evaluation.test_distributions import PredictionStore, predictions

# A confusion matrix costs C^2 floats per device; beyond this it is skipped (ImageNet-LT's
# 1,000 classes take 4 MB, iNaturalist's 8,142 would take 265 MB).
MAX_CONFUSION_CLASSES = 1000
TOP_CONFUSED_PAIRS = 20


def analysis_sums(logits, labels, mask, log_prior, *, taus, aggregation, with_confusion):
    """Every per-class / per-bin sum of one batch (unreduced over devices).

    logits [K, b, C], labels [b], mask [b], log_prior [C]. Returns (sums, ensemble log-probs
    [b, C]); sums holds correct [T, K + 1, C], totals [C], kl_experts [P, C],
    calibration [K + 1, bins, 3], hardest_negative [K + 1, bins], hardest_negative_sum [K + 1]
    and, with_confusion, confusion [C, C] of the ensemble."""
    correct, totals = metrics.per_class_correct(
        logits, labels, mask, log_prior=log_prior, taus=taus, aggregation=aggregation
    )
    log_probs = metrics.model_log_probs(logits, aggregation)  # [K + 1, b, C]
    hardest = metrics.hardest_negative_probability(log_probs, labels)  # [K + 1, b]
    sums = {
        "correct": correct,
        "totals": totals,
        "kl_experts": metrics.pairwise_kl_per_class(log_probs[:-1], labels, mask),
        "calibration": metrics.calibration_sums(log_probs, labels, mask),
        "hardest_negative": metrics.histogram_counts(hardest, mask, metrics.HARDEST_NEGATIVE_BINS),
        "hardest_negative_sum": jnp.sum(hardest * mask, axis=-1),
    }
    if with_confusion:
        predictions = jnp.argmax(log_probs[-1], axis=-1)
        sums["confusion"] = metrics.confusion_counts(predictions, labels, mask, logits.shape[-1])
    return sums, log_probs[-1]


def _analysis_step(state, batch, adjustments, *, cfg, with_confusion):
    logits = eval_step(state, batch, cfg=cfg)
    counts = jnp.asarray(cfg.class_counts, jnp.float32)
    sums, ensemble_log_probs = analysis_sums(
        logits,
        batch["label"],
        batch["mask"],
        jnp.log(counts / jnp.sum(counts)),
        taus=cfg.eval.taus,
        aggregation=cfg.eval.aggregation,
        with_confusion=with_confusion,
    )
    preds = None if adjustments is None else predictions(logits, adjustments, cfg.eval.aggregation)
    return jax.lax.psum(sums, AXIS), ensemble_log_probs, preds


def _pair_kl_step(log_p, log_q, batch):
    return jax.lax.psum(metrics.kl_per_class(log_p, log_q, batch["label"], batch["mask"]), AXIS)


@jax.jit
def _accumulate(total, new):
    return jax.tree.map(jnp.add, total, new)


@dataclasses.dataclass
class PassResult:
    """Host sums of one analysis pass: one dict per run, and the symmetric KL between every
    two runs' ensembles {(i, j): [C]} (i < j)."""

    runs: list[dict[str, np.ndarray]]
    kl_between_runs: dict[tuple[int, int], np.ndarray]
    seconds: float
    predictions: list | None = None  # per run, a PredictionStore (with `adjustments`)


def analysis_pass(
    step_cfgs: Sequence,
    states: Sequence,
    batches: Iterable[dict],
    *,
    num_batches: int | None = None,
    progress: Callable[[str], None] | None = None,
    adjustments: Sequence[np.ndarray] | None = None,
    global_batch: int | None = None,
) -> PassResult:
    """Evaluates every run on the same batches once; everything stays on device until the end.

    step_cfgs / states: one StepConfig and host TrainState per run (same classes). Reports
    progress with an ETA about every 10% of `num_batches` through `progress`. With
    `adjustments` (per run, [D, C] test-prior adjustments) the pass also keeps every image's
    predictions (test_distributions.predictions) in a PredictionStore per run, which needs
    the `global_batch` size of `batches`."""
    num_classes = len(step_cfgs[0].class_counts)
    with_confusion = num_classes <= MAX_CONFUSION_CLASSES
    steps = [
        jax.pmap(
            functools.partial(_analysis_step, cfg=cfg, with_confusion=with_confusion),
            axis_name=AXIS,
            in_axes=(0, 0, None),
        )
        for cfg in step_cfgs
    ]
    shifts = [None] * len(states) if adjustments is None else [jnp.asarray(a) for a in adjustments]
    stores = None if adjustments is None else [PredictionStore(global_batch) for _ in states]
    pair_kl = jax.pmap(_pair_kl_step, axis_name=AXIS)
    replicated = [replicate(state) for state in states]
    pairs = list(itertools.combinations(range(len(states)), 2))
    totals: list = [None] * len(states)
    kl_totals: dict = {}
    start, report_every = time.perf_counter(), max(1, (num_batches or 10) // 10)
    seen, first_done = 0, start
    for batch in batches:
        log_probs = []
        for r, (step, state) in enumerate(zip(steps, replicated, strict=True)):
            sums, lp, preds = step(state, batch, shifts[r])
            totals[r] = sums if totals[r] is None else _accumulate(totals[r], sums)
            log_probs.append(lp)
            if stores is not None:
                stores[r].add(seen, preds)
        for i, j in pairs:
            kl = pair_kl(log_probs[i], log_probs[j], batch)
            kl_totals[i, j] = kl if (i, j) not in kl_totals else _accumulate(kl_totals[i, j], kl)
        seen += 1
        if seen == 1:  # the first batch includes compiling: the ETA uses the later ones
            first_done = time.perf_counter()
        if progress is not None and num_batches and (seen % report_every == 0 or seen == 1):
            now = time.perf_counter()
            if seen == 1:  # compiled and ran the first batch: no rate to extrapolate yet
                progress(f"analysis: 1/{num_batches} batches (compiled), {now - start:.0f} s")
            else:
                rate = (now - first_done) / (seen - 1)
                progress(
                    f"analysis: {seen}/{num_batches} batches, {now - start:.0f} s, "
                    f"ETA {rate * (num_batches - seen):.0f} s"
                )
    if seen == 0:
        raise ValueError("the evaluation split is empty; check dataset.eval_split.")
    host = [unreplicate(t) for t in totals]
    between = {pair: unreplicate(kl) for pair, kl in kl_totals.items()}
    return PassResult(host, between, time.perf_counter() - start, stores)


# ---------------------------------------------------------------------------- summaries
def _percent(correct: np.ndarray, totals: np.ndarray) -> list[float | None]:
    return [
        100.0 * float(c) / float(t) if t > 0 else None for c, t in zip(correct, totals, strict=True)
    ]


def _mean_per_class(sums: np.ndarray, totals: np.ndarray) -> list[float | None]:
    return [float(s) / float(t) if t > 0 else None for s, t in zip(sums, totals, strict=True)]


def group_means(sums: np.ndarray, totals: np.ndarray, masks: dict) -> dict:
    """Per-sample means over each class group (and `all`) from per-class sums [C]."""
    out = {}
    for name, mask in {"all": np.ones_like(totals, bool), **masks}.items():
        n = float(totals[mask].sum())
        out[name] = float(sums[mask].sum()) / n if n > 0 else None
    return out


def model_names(num_experts: int) -> list[str]:
    """Names of the K + 1 models of a run, in the order of the sums."""
    return [f"expert_{k}" for k in range(num_experts)] + ["ensemble"]


def summarize(sums: dict[str, np.ndarray], *, info, taus, class_names) -> dict:
    """The analysis.json body of one run from its pass sums (numbers only; metadata is added
    by the caller). Accuracies in percent, ECE and probabilities as fractions, KL in nats."""

    correct, totals = np.asarray(sums["correct"], np.float64), np.asarray(sums["totals"])
    num_experts = correct.shape[1] - 1
    names = model_names(num_experts)
    groups = {rule: info.group_masks(rule) for rule in GROUP_RULES}
    result = {
        "per_class": {
            "train_count": [int(n) for n in info.class_counts],
            "test_count": [int(n) for n in totals],
            "top1": {name: _percent(correct[0, m], totals) for m, name in enumerate(names)},
        },
        "groups": {
            rule: _group_accuracies(correct[0], totals, masks) for rule, masks in groups.items()
        },
        "group_classes": {
            rule: {g: np.flatnonzero(mask).tolist() for g, mask in masks.items()}
            for rule, masks in groups.items()
        },
    }
    result["logit_adjusted"] = {
        f"{tau:g}": {
            name: 100.0 * float(correct[t, m].sum()) / max(float(totals.sum()), 1.0)
            for m, name in enumerate(names)
        }
        for t, tau in enumerate(taus)
    }
    calibration = np.asarray(sums["calibration"], np.float64)
    result["ece"] = {
        name: metrics.expected_calibration_error(calibration[m]) for m, name in enumerate(names)
    }
    result["reliability"] = {name: _reliability(calibration[m]) for m, name in enumerate(names)}
    histogram = np.asarray(sums["hardest_negative"], np.float64)
    hardest_sum = np.asarray(sums["hardest_negative_sum"], np.float64)
    result["hardest_negative"] = {
        "bin_edges": np.linspace(0, 1, histogram.shape[1] + 1).round(6).tolist(),
        "counts": {name: histogram[m].astype(int).tolist() for m, name in enumerate(names)},
        "mean": {
            name: float(hardest_sum[m] / max(totals.sum(), 1.0)) for m, name in enumerate(names)
        },
    }
    result["kl_experts"] = _kl_experts(sums["kl_experts"], totals, groups, num_experts)
    confusion = sums.get("confusion")
    if confusion is None:
        result["confused_pairs"] = None
        result["confusion"] = None
    else:
        confusion = np.asarray(confusion, np.float64).astype(np.int64)
        result["confused_pairs"] = top_confused_pairs(confusion, class_names)
        result["confusion"] = confusion.tolist() if len(totals) <= 100 else None
    return result


def _group_accuracies(correct: np.ndarray, totals: np.ndarray, masks: dict) -> dict:
    """{expert_k | ensemble: {top1, many, medium, few}} from correct [K + 1, C]."""
    summary = metrics.accuracy_summary(correct, totals, masks)
    names = model_names(len(summary["experts"]))
    return dict(zip(names, [*summary["experts"], summary["ensemble"]], strict=True))


def _reliability(sums: np.ndarray) -> dict:
    count, confidence, correct = (sums[:, i] for i in range(3))
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(count > 0, correct / np.maximum(count, 1), np.nan)
        mean_confidence = np.where(count > 0, confidence / np.maximum(count, 1), np.nan)
    to_list = lambda a: [None if np.isnan(v) else float(v) for v in a]
    return {
        "bin_edges": np.linspace(0, 1, len(count) + 1).round(6).tolist(),
        "count": count.astype(int).tolist(),
        "accuracy": to_list(accuracy),
        "confidence": to_list(mean_confidence),
    }


def _kl_experts(kl: np.ndarray, totals: np.ndarray, groups: dict, num_experts: int):
    kl = np.asarray(kl, np.float64)
    if num_experts < 2:
        return None
    mean = kl.mean(axis=0)  # over pairs: the mean over ordered pairs of Eq. 8's terms
    return {
        "pairs": {
            f"{i}-{j}": _mean_per_class(kl[p], totals)
            for p, (i, j) in enumerate(metrics.expert_pairs(num_experts))
        },
        "per_class": _mean_per_class(mean, totals),
        "groups": {rule: group_means(mean, totals, masks) for rule, masks in groups.items()},
    }


def kl_between(kl: np.ndarray, totals: np.ndarray, info) -> dict:
    """Per-class and per-group mean symmetric KL between two runs' ensembles."""

    kl = np.asarray(kl, np.float64)
    return {
        "per_class": _mean_per_class(kl, totals),
        "groups": {rule: group_means(kl, totals, info.group_masks(rule)) for rule in GROUP_RULES},
    }


def top_confused_pairs(confusion: np.ndarray, class_names, top: int = TOP_CONFUSED_PAIRS):
    """The `top` largest off-diagonal entries of a confusion matrix [C, C] (row = true),
    largest first, ties by (true, predicted) index."""
    off = np.array(confusion, np.int64)
    np.fill_diagonal(off, 0)
    flat = np.flatnonzero(off)
    order = np.lexsort((flat, -off.flat[flat]))[:top]
    out = []
    for index in flat[order]:
        true, predicted = divmod(int(index), off.shape[1])
        out.append(
            {
                "true": true,
                "predicted": predicted,
                "true_name": class_names[true],
                "predicted_name": class_names[predicted],
                "count": int(off[true, predicted]),
            }
        )
    return out
