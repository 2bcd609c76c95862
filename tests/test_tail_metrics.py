"""Tail-sensitive metrics (ncl_jax.evaluation.tail_metrics, core.metrics.likelihood_sums)
against numpy written here, on fixed logits."""

import jax.numpy as jnp
import numpy as np
import pytest

from ncl_jax.core import metrics
from ncl_jax.evaluation import tail_metrics

RNG = np.random.default_rng(7)
K, B, C = 2, 60, 4
LOGITS = (RNG.normal(size=(K, B, C)) * 2).astype(np.float32)
LABELS = RNG.integers(0, C, size=B).astype(np.int32)
MASK = np.arange(B) < 55  # the last 5 are padding
COUNTS = np.array([100.0, 30.0, 10.0, 2.0])
MASKS = {
    "many": np.array([True, False, False, False]),
    "medium": np.array([False, True, True, False]),
    "few": np.array([False, False, False, True]),
}


def _np_log_softmax(z):
    z = z.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _np_models(logits, aggregation):
    """log-probabilities [K + 1, b, C]: experts, then the ensemble."""
    experts = _np_log_softmax(logits)
    if aggregation == "mean_logits":
        ensemble = _np_log_softmax(logits.astype(np.float64).mean(0))
    else:
        ensemble = np.log(np.exp(experts).mean(0))
    return np.concatenate([experts, ensemble[None]])


def _np_ece(log_probs, labels, bins=15):
    conf = np.exp(log_probs.max(-1))
    hit = log_probs.argmax(-1) == labels
    total = 0.0
    for i in range(bins):
        lo, hi = i / bins, (i + 1) / bins
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.sum() * abs(hit[sel].mean() - conf[sel].mean())
    return total / len(labels)


def _np_spread(per_class):
    with np.errstate(divide="ignore"):  # a class at 0 %: 1/0 = inf, so the harmonic mean is 0
        return (
            per_class.min(),
            len(per_class) / np.sum(1 / per_class),
            np.prod(per_class) ** (1 / len(per_class)),
        )


@pytest.mark.parametrize("aggregation", metrics.AGGREGATIONS)
def test_nll_ece_and_class_spread_match_numpy_for_every_model_and_tau(aggregation):
    log_prior = np.log(COUNTS / COUNTS.sum())
    taus = (0.0, 1.0)
    args = (jnp.asarray(LOGITS), jnp.asarray(LABELS), jnp.asarray(MASK))
    options = dict(
        log_prior=jnp.asarray(log_prior, jnp.float32), taus=taus, aggregation=aggregation
    )
    correct, totals = metrics.per_class_correct(*args, **options)
    sums = {"correct": correct, "totals": totals, **metrics.likelihood_sums(*args, **options)}
    sums = {k: np.asarray(v) for k, v in sums.items()}
    out = tail_metrics.evaluation_body(sums, MASKS, taus=taus, aggregation=aggregation)

    labels, n = LABELS[MASK], MASK.sum()
    for t, tau in enumerate(taus):
        body = out if t == 0 else out["logit_adjusted"]["1"]
        log_probs = _np_models(LOGITS[:, MASK] - tau * log_prior, aggregation)
        models = [*body["experts"], body["ensemble"]]
        for m, scores in enumerate(models):
            nll = -log_probs[m][np.arange(n), labels].mean()
            assert scores["nll"] == pytest.approx(nll, rel=1e-5)
            assert scores["ece"] == pytest.approx(_np_ece(log_probs[m], labels), abs=1e-6)
            hits = log_probs[m].argmax(-1) == labels
            per_class = np.array([100 * hits[labels == c].mean() for c in range(C)])
            worst, hmean, gmean = _np_spread(per_class)
            assert scores["worst_class"] == pytest.approx(worst)
            assert scores["hmean"] == pytest.approx(hmean)
            assert scores["gmean"] == pytest.approx(gmean)
            assert scores["top1"] == pytest.approx(100 * hits.mean())
        best = body["best_single"]
        assert best == {**body["experts"][best["expert"]], "expert": best["expert"]}


def test_a_class_never_right_makes_both_means_zero_and_empty_classes_are_ignored():
    correct, totals = np.array([8.0, 0.0, 3.0, 0.0]), np.array([10.0, 5.0, 4.0, 0.0])
    assert tail_metrics.class_spread(correct, totals) == {
        "worst_class": 0.0,
        "hmean": 0.0,
        "gmean": 0.0,
    }
    correct = np.array([8.0, 1.0, 3.0, 0.0])  # class 3 has no images: left out
    out = tail_metrics.class_spread(correct, totals)
    per_class = np.array([80.0, 20.0, 75.0])
    worst, hmean, gmean = _np_spread(per_class)
    assert out == pytest.approx({"worst_class": worst, "hmean": hmean, "gmean": gmean})
    assert tail_metrics.class_spread(correct, np.zeros(4))["hmean"] is None


def test_report_has_a_mean_and_std_column_per_tail_metric_and_tolerates_older_runs(tmp_path):
    import csv
    import json

    from ncl_jax.analysis import report

    def scores(top1, **tail):
        return {"top1": top1, "many": top1, "medium": top1, "few": None, **tail}

    for seed, tail in [(1, {"hmean": 10.0, "nll": 1.5, "ece": 0.1}), (2, {"hmean": 20.0}), (3, {})]:
        run = tmp_path / f"s{seed}"
        run.mkdir()
        (run / "config.json").write_text(json.dumps({"seed": seed}))
        evaluation = {
            "experts": [scores(30.0, **tail), scores(40.0, **tail)],
            "ensemble": scores(50.0, **tail),
            "best_single": {**scores(40.0, **tail), "expert": 1},
        }
        result = {"final": evaluation, "best_evals": {"ensemble": evaluation}}
        (run / "result.json").write_text(json.dumps(result))
    report.write_report(str(tmp_path))
    (row,) = list(csv.DictReader((tmp_path / report.REPORT_CSV).open()))
    for name in tail_metrics.TAIL_METRICS:
        assert f"last_ensemble_{name}_mean" in row and f"best_single_{name}_std" in row
    assert float(row["last_ensemble_hmean_mean"]) == pytest.approx(15.0)
    assert float(row["last_experts_mean_hmean_std"]) == pytest.approx(np.std([10, 20], ddof=1))
    assert float(row["last_single_nll_mean"]) == pytest.approx(1.5)
    assert row["last_ensemble_nll_std"] == "" and row["last_ensemble_worst_class_mean"] == ""
