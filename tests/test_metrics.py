"""Metric definitions (ncl_jax.metrics) against numpy on small fixed inputs."""

import jax.numpy as jnp
import numpy as np

from ncl_jax import metrics

RNG = np.random.default_rng(0)
K, B, C = 3, 12, 5
LOGITS = RNG.normal(size=(K, B, C)).astype(np.float32)
LABELS = RNG.integers(0, C, size=B).astype(np.int32)
MASK = np.array([True] * 10 + [False] * 2)


def test_per_class_correct_counts_experts_and_mean_logit_ensemble_ignoring_padding():
    correct, totals = metrics.per_class_correct(
        jnp.asarray(LOGITS), jnp.asarray(LABELS), jnp.asarray(MASK)
    )
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
