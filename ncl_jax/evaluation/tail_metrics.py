"""Tail-sensitive metrics of an evaluation: worst-class top-1, the harmonic and geometric
means of per-class top-1 (as LIFT reports), NLL and ECE (as MiSLAS and the uncertainty
baselines report), added to every model of the evaluation JSON.

Per-class top-1 ignores classes without evaluation images. The harmonic and geometric means
are 0 when any class scores 0 (their limits: one class the model never gets right makes the
tail-sensitive mean 0, which is the point of reporting them). NLL is the mean of
-log p(label) in nats, p the model's softmax (the ensemble's by `eval_aggregation`); ECE is
`core.metrics.expected_calibration_error` (15 bins, a fraction). Host numpy only: the device
side is `core.metrics.likelihood_sums` inside `core.train_step.eval_sums`.
"""

from __future__ import annotations

import numpy as np

from ncl_jax.core import metrics

TAIL_METRICS = ("worst_class", "hmean", "gmean", "nll", "ece")


def per_class_top1(correct: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Top-1 in percent of each class that has evaluation images. correct, totals [C]."""
    correct, totals = np.asarray(correct, np.float64), np.asarray(totals, np.float64)
    present = totals > 0
    return 100.0 * correct[present] / totals[present]


def class_spread(correct: np.ndarray, totals: np.ndarray) -> dict[str, float | None]:
    """{worst_class, hmean, gmean} of the per-class top-1 (percent; None without images)."""
    top1 = per_class_top1(correct, totals)
    if top1.size == 0:
        return {"worst_class": None, "hmean": None, "gmean": None}
    if np.any(top1 == 0):
        return {"worst_class": 0.0, "hmean": 0.0, "gmean": 0.0}
    return {
        "worst_class": float(top1.min()),
        "hmean": float(top1.size / np.sum(1.0 / top1)),
        "gmean": float(np.exp(np.mean(np.log(top1)))),
    }


def model_tail_metrics(correct, totals, nll_sum, calibration) -> dict[str, float | None]:
    """All TAIL_METRICS of one model: correct [C], totals [C], nll_sum scalar,
    calibration [bins, 3]."""
    n = float(np.sum(totals))
    return {
        **class_spread(correct, totals),
        "nll": float(nll_sum) / n if n > 0 else None,
        "ece": metrics.expected_calibration_error(calibration),
    }


def add_tail_metrics(result: dict, sums: dict[str, np.ndarray], taus) -> dict:
    """The evaluation JSON `result` (core.metrics.evaluation_result of the same sums) with
    TAIL_METRICS added to every expert, the ensemble and best_single, at the top level (raw
    logits) and in each `logit_adjusted` body. sums: `core.train_step.eval_sums` summed over
    the evaluation (correct [T, K + 1, C], totals [C], nll [T, K + 1], calibration
    [T, K + 1, bins, 3])."""
    totals = np.asarray(sums["totals"], np.float64)
    bodies = [(0, result)] + [
        (t, result["logit_adjusted"][f"{tau:g}"]) for t, tau in enumerate(taus) if t > 0
    ]
    for t, body in bodies:
        scores = [
            model_tail_metrics(
                sums["correct"][t, m], totals, sums["nll"][t, m], sums["calibration"][t, m]
            )
            for m in range(len(body["experts"]) + 1)
        ]
        for expert, extra in zip(body["experts"], scores[:-1], strict=True):
            expert.update(extra)
        body["ensemble"].update(scores[-1])
        body["best_single"].update(scores[body["best_single"]["expert"]])
    return result


def evaluation_body(sums: dict, group_masks: dict, *, taus, aggregation: str) -> dict:
    """The whole evaluation JSON of summed `eval_sums`: top-1 and groups
    (core.metrics.evaluation_result) plus the tail-sensitive metrics."""
    result = metrics.evaluation_result(
        sums["correct"], sums["totals"], group_masks, taus=taus, aggregation=aggregation
    )
    return add_tail_metrics(result, sums, taus)
