"""Metric definitions (ncl_jax.core.metrics) against numpy on small fixed inputs."""

import jax.numpy as jnp
import numpy as np

from ncl_jax.core import metrics

RNG = np.random.default_rng(0)
K, B, C = 3, 12, 5
LOGITS = RNG.normal(size=(K, B, C)).astype(np.float32)
LABELS = RNG.integers(0, C, size=B).astype(np.int32)
MASK = np.array([True] * 10 + [False] * 2)


def test_per_class_correct_counts_experts_and_mean_logit_ensemble_ignoring_padding():
    correct, totals = metrics.per_class_correct(
        jnp.asarray(LOGITS), jnp.asarray(LABELS), jnp.asarray(MASK)
    )
    assert correct.shape == (1, K + 1, C)  # one tau: the raw logits
    correct = correct[0]
    want_correct = np.zeros((K + 1, C))
    want_totals = np.zeros(C)
    for i in range(B):
        if not MASK[i]:
            continue
        want_totals[LABELS[i]] += 1
        for k in range(K):
            want_correct[k, LABELS[i]] += np.argmax(LOGITS[k, i]) == LABELS[i]
        want_correct[K, LABELS[i]] += np.argmax(LOGITS[:, i].mean(0)) == LABELS[i]
    np.testing.assert_array_equal(np.asarray(correct), want_correct)
    np.testing.assert_array_equal(np.asarray(totals), want_totals)


def test_accuracy_summary_groups_best_single_and_empty_groups():
    correct = np.array([[5, 2, 0], [4, 3, 1], [6, 3, 1]], np.float64)  # 2 experts + ensemble
    totals = np.array([10, 5, 0], np.float64)
    masks = {
        "many": np.array([True, False, False]),
        "medium": np.array([False, True, False]),
        "few": np.array([False, False, True]),
    }
    out = metrics.accuracy_summary(correct, totals, masks)
    assert out["num_examples"] == 15
    assert out["experts"][0] == {"top1": 100 * 7 / 15, "many": 50.0, "medium": 40.0, "few": None}
    assert out["ensemble"]["top1"] == 100 * 10 / 15
    assert out["best_single"]["expert"] == 1 and out["best_single"]["top1"] == 100 * 8 / 15
    scalars = metrics.eval_scalars(out)
    assert scalars["eval/expert_1/medium"] == 60.0 and "eval/expert_0/few" not in scalars


def test_train_metrics_are_sum_count_pairs():
    aux = {"nil_all": jnp.float32(2.0)}
    out = metrics.train_metrics(jnp.float32(3.0), aux, jnp.asarray(LOGITS), jnp.asarray(LABELS))
    np.testing.assert_allclose(np.asarray(out["loss"]), [3.0 * B, B])
    np.testing.assert_allclose(np.asarray(out["nil_all"]), [2.0 * B, B])
    for k in range(K):
        hits = np.sum(np.argmax(LOGITS[k], -1) == LABELS)
        np.testing.assert_array_equal(np.asarray(out[f"accuracy/expert_{k}"]), [hits, B])
    hits = np.sum(np.argmax(LOGITS.mean(0), -1) == LABELS)
    np.testing.assert_array_equal(np.asarray(out["accuracy/ensemble"]), [hits, B])


def test_metric_sums_average_over_steps_and_devices_and_keep_the_first_bad_step():
    sums = metrics.MetricSums()
    no_step = np.iinfo(np.int32).max
    sums.add(
        {
            "loss": jnp.array([[2.0, 1.0], [4.0, 1.0]]),
            metrics.NONFINITE_KEY: jnp.array([no_step, no_step]),
        }
    )
    sums.add(
        {
            "loss": jnp.array([[6.0, 2.0], [0.0, 0.0]]),
            metrics.NONFINITE_KEY: jnp.array([7, no_step]),
        }
    )
    means, first_bad = sums.result()
    assert means == {"loss": 12.0 / 4.0} and first_bad == 7
    assert sums.result() == ({}, None)  # reset after reading


def _numpy_correct(logits, labels, mask, log_prior, tau, aggregation):
    """Per-class correct counts [K + 1, C], one sample at a time."""
    k, b, c = logits.shape
    out = np.zeros((k + 1, c))
    for i in range(b):
        if not mask[i]:
            continue
        z = logits[:, i].astype(np.float64) - tau * log_prior
        for e in range(k):
            out[e, labels[i]] += np.argmax(z[e]) == labels[i]
        if aggregation == "mean_logits":
            scores = z.mean(0)
        else:
            p = np.exp(z - z.max(-1, keepdims=True))
            scores = (p / p.sum(-1, keepdims=True)).mean(0)
        out[k, labels[i]] += np.argmax(scores) == labels[i]
    return out


def test_logit_adjustment_and_both_aggregations_match_numpy():
    counts = np.array([500.0, 120.0, 40.0, 9.0, 3.0])
    log_prior = np.log(counts / counts.sum())
    logits = RNG.normal(size=(K, 40, C)).astype(np.float32) * 3
    labels = RNG.integers(0, C, size=40).astype(np.int32)
    mask = np.ones(40, bool)
    taus = (0.0, 0.5, 1.0)
    for aggregation in metrics.AGGREGATIONS:
        correct, _ = metrics.per_class_correct(
            jnp.asarray(logits),
            jnp.asarray(labels),
            jnp.asarray(mask),
            log_prior=jnp.asarray(log_prior, jnp.float32),
            taus=taus,
            aggregation=aggregation,
        )
        for t, tau in enumerate(taus):
            want = _numpy_correct(logits, labels, mask, log_prior, tau, aggregation)
            np.testing.assert_array_equal(
                np.asarray(correct[t]), want, err_msg=f"{aggregation} {tau}"
            )
    # The adjustment moves predictions towards the tail: more tail hits at tau=1 than at 0.
    correct, _ = metrics.per_class_correct(
        jnp.asarray(logits),
        jnp.asarray(labels),
        jnp.asarray(mask),
        log_prior=jnp.asarray(log_prior, jnp.float32),
        taus=(0.0, 1.0),
    )
    assert np.asarray(correct)[1, :, 3:].sum() >= np.asarray(correct)[0, :, 3:].sum()


def test_tau_zero_is_the_raw_logits_bit_for_bit_and_leads_the_json():
    log_prior = jnp.log(jnp.array([0.5, 0.3, 0.1, 0.05, 0.05]))
    z = jnp.asarray(LOGITS)
    assert metrics.adjust_logits(z, log_prior, 0.0) is z
    correct = np.stack([np.eye(2), np.eye(2)])[:, :, :]  # T=2, K+1=2, C=2
    masks = {
        "many": np.array([True, False]),
        "medium": np.array([False, True]),
        "few": np.array([False, False]),
    }
    out = metrics.evaluation_result(
        np.concatenate([correct, correct[:, :1]], 1),
        np.array([1.0, 1.0]),
        masks,
        taus=(0.0, 0.5),
        aggregation="mean_probs",
    )
    assert out["aggregation"] == "mean_probs" and set(out["logit_adjusted"]) == {"0.5"}
    assert out["ensemble"] == out["logit_adjusted"]["0.5"]["ensemble"]
    scalars = metrics.eval_scalars(out)
    assert "eval/ensemble/top1" in scalars and "eval_tau0.5/ensemble/top1" in scalars
