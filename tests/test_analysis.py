"""Analysis metrics and analysis.json against numpy on small fixed logits; figures; bad input.

The end-to-end `analyze` run on a trained smoke workdir is in test_train.py (slow tier)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncl_jax import analyze as analyze_program
from ncl_jax.analysis import analyze
from ncl_jax.core import metrics
from ncl_jax.data.long_tail import DatasetInfo
from ncl_jax.errors import CheckpointError, ConfigError
from ncl_jax.evaluation import analysis_pass, distribution_sets, plots, test_distributions
from ncl_jax.training import checkpointing

RNG = np.random.default_rng(7)
K, B, C = 3, 40, 6
LOGITS = (3 * RNG.normal(size=(K, B, C))).astype(np.float32)
LABELS = RNG.integers(0, C, size=B).astype(np.int32)
MASK = np.array([True] * 36 + [False] * 4)
COUNTS = np.array([500, 150, 100, 60, 20, 5])


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_model_probs(logits, aggregation):
    """[K + 1, b, C]: experts, then the ensemble."""
    experts = _softmax(logits.astype(np.float64))
    if aggregation == "mean_logits":
        ensemble = _softmax(logits.astype(np.float64).mean(0))
    else:
        ensemble = experts.mean(0)
    return np.concatenate([experts, ensemble[None]])


def _np_kl(p, q):
    return np.sum(p * np.log(p / q), -1)


@pytest.mark.parametrize("aggregation", ["mean_logits", "mean_probs"])
def test_model_probabilities_for_both_aggregations(aggregation):
    got = np.exp(np.asarray(metrics.model_log_probs(jnp.asarray(LOGITS), aggregation)))
    np.testing.assert_allclose(got, _np_model_probs(LOGITS, aggregation), rtol=1e-5, atol=1e-7)


def test_kl_between_expert_pairs_and_between_models_per_class():
    probs = _np_model_probs(LOGITS, "mean_logits")
    log_probs = jnp.log(jnp.asarray(probs, jnp.float32))
    got = np.asarray(
        metrics.pairwise_kl_per_class(log_probs[:K], jnp.asarray(LABELS), jnp.asarray(MASK))
    )
    pairs = metrics.expert_pairs(K)
    assert pairs == [(0, 1), (0, 2), (1, 2)]
    want = np.zeros((len(pairs), C))
    for p, (i, j) in enumerate(pairs):
        for n in np.flatnonzero(MASK):
            a, b = probs[i, n], probs[j, n]
            want[p, LABELS[n]] += 0.5 * (_np_kl(a, b) + _np_kl(b, a))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # Between two models: the same quantity for one pair.
    between = metrics.kl_per_class(
        log_probs[0], log_probs[2], jnp.asarray(LABELS), jnp.asarray(MASK)
    )
    np.testing.assert_allclose(np.asarray(between), want[1], rtol=1e-4, atol=1e-6)
    # One expert: no pairs.
    assert metrics.pairwise_kl_per_class(log_probs[:1], LABELS, MASK).shape == (0, C)


def test_hardest_negative_probability_and_its_histogram():
    probs = _np_model_probs(LOGITS, "mean_logits")
    got = np.asarray(
        metrics.hardest_negative_probability(jnp.log(jnp.asarray(probs, jnp.float32)), LABELS)
    )
    want = probs.copy()
    want[:, np.arange(B), LABELS] = 0
    np.testing.assert_allclose(got, want.max(-1), rtol=1e-5)
    counts = np.asarray(metrics.histogram_counts(jnp.asarray(got), jnp.asarray(MASK), 20))
    for m in range(K + 1):
        hist, _ = np.histogram(got[m][MASK], bins=20, range=(0, 1))
        np.testing.assert_array_equal(counts[m], hist)
    edge = metrics.histogram_counts(jnp.array([[0.0, 0.05, 1.0]]), jnp.ones(3, bool), 20)
    assert np.asarray(edge)[0, 0] == 1 and np.asarray(edge)[0, 1] == 1  # [i/n, (i+1)/n)
    assert np.asarray(edge)[0, -1] == 1  # 1.0 goes to the last bin


def test_calibration_bins_and_ece_match_numpy():
    probs = _np_model_probs(LOGITS, "mean_probs")
    sums = np.asarray(
        metrics.calibration_sums(jnp.log(jnp.asarray(probs, jnp.float32)), LABELS, MASK)
    )
    assert sums.shape == (K + 1, 15, 3)
    for m in range(K + 1):
        confidence = probs[m].max(-1)[MASK]
        correct = (probs[m].argmax(-1) == LABELS)[MASK]
        # Bins (i/15, (i+1)/15], computed independently with np.digitize.
        index = np.clip(np.digitize(confidence, np.linspace(0, 1, 16), right=True) - 1, 0, 14)
        ece = 0.0
        for i in range(15):
            in_bin = index == i
            assert sums[m, i, 0] == in_bin.sum()
            if in_bin.any():
                gap = abs(correct[in_bin].mean() - confidence[in_bin].mean())
                ece += in_bin.sum() / MASK.sum() * gap
        assert metrics.expected_calibration_error(sums[m]) == pytest.approx(ece, abs=1e-6)


def test_confusion_counts_and_top_confused_pairs():
    preds = LOGITS.mean(0).argmax(-1)
    got = np.asarray(metrics.confusion_counts(jnp.asarray(preds), LABELS, MASK, C))
    want = np.zeros((C, C))
    for n in np.flatnonzero(MASK):
        want[LABELS[n], preds[n]] += 1
    np.testing.assert_array_equal(got, want)
    confusion = np.array([[5, 3, 0], [3, 4, 1], [0, 7, 2]])
    pairs = analysis_pass.top_confused_pairs(confusion, ["a", "b", "c"], top=3)
    assert [(p["true"], p["predicted"], p["count"]) for p in pairs] == [
        (2, 1, 7),
        (0, 1, 3),  # ties: lower (true, predicted) first
        (1, 0, 3),
    ]
    assert pairs[0]["true_name"] == "c" and pairs[0]["predicted_name"] == "b"


def _info():
    return DatasetInfo(
        name="toy", num_classes=C, class_counts=COUNTS, num_train=int(COUNTS.sum()), num_eval=B
    )


def _summary(aggregation="mean_logits", taus=(0.0, 1.0)):
    log_prior = np.log(COUNTS / COUNTS.sum()).astype(np.float32)
    sums, _ = jax.jit(
        lambda lg: analysis_pass.analysis_sums(
            lg,
            jnp.asarray(LABELS),
            jnp.asarray(MASK),
            jnp.asarray(log_prior),
            taus=taus,
            aggregation=aggregation,
            with_confusion=True,
        )
    )(jnp.asarray(LOGITS))
    sums = jax.device_get(sums)
    names = [f"c{i}" for i in range(C)]
    return analysis_pass.summarize(sums, info=_info(), taus=taus, class_names=names)


@pytest.mark.parametrize("aggregation", ["mean_logits", "mean_probs"])
def test_summary_per_class_top1_groups_logit_adjustment_and_ece(aggregation):
    out = _summary(aggregation)
    probs = _np_model_probs(LOGITS, aggregation)
    test_count = np.bincount(LABELS[MASK], minlength=C)
    assert out["per_class"]["test_count"] == test_count.tolist()
    assert out["per_class"]["train_count"] == COUNTS.tolist()
    for m, name in enumerate(analysis_pass.model_names(K)):
        hits = (probs[m].argmax(-1) == LABELS) & MASK
        per_class = 100 * np.bincount(LABELS[hits], minlength=C) / np.maximum(test_count, 1)
        got = np.array([np.nan if v is None else v for v in out["per_class"]["top1"][name]])
        np.testing.assert_allclose(got[test_count > 0], per_class[test_count > 0])
        assert all(v is None for v in np.array(out["per_class"]["top1"][name])[test_count == 0])
        assert out["logit_adjusted"]["0"][name] == pytest.approx(100 * hits.sum() / MASK.sum())
        # tau = 1: argmax of logits - log prior (the ensemble combines the adjusted logits).
        adjusted = LOGITS - np.log(COUNTS / COUNTS.sum())
        scores = _np_model_probs(adjusted, aggregation)[m]
        hits_adjusted = ((scores.argmax(-1) == LABELS) & MASK).sum()
        assert out["logit_adjusted"]["1"][name] == pytest.approx(100 * hits_adjusted / MASK.sum())
        # many (official rule): classes with >= 100 training images.
        many = COUNTS >= 100
        want_many = 100 * hits[np.isin(LABELS, np.flatnonzero(many))].sum() / test_count[many].sum()
        assert out["groups"]["official"][name]["many"] == pytest.approx(want_many)
        assert 0 <= out["ece"][name] <= 1
    assert out["group_classes"]["paper"]["many"] == [0, 1]  # > 100 images
    assert out["group_classes"]["official"]["many"] == [0, 1, 2]  # >= 100 images
    assert out["group_classes"]["paper"]["few"] == [5] and out["group_classes"]["official"][
        "few"
    ] == [4, 5]
    kl = out["kl_experts"]
    assert set(kl["pairs"]) == {"0-1", "0-2", "1-2"}
    # The per-class mean over pairs is the mean of the pair curves.
    present = test_count > 0
    mean = np.mean([np.array(v, dtype=float)[present] for v in kl["pairs"].values()], axis=0)
    np.testing.assert_allclose(np.array(kl["per_class"], dtype=float)[present], mean)
    assert sum(out["hardest_negative"]["counts"]["ensemble"]) == MASK.sum()
    assert np.array(out["confusion"]).sum() == MASK.sum()


def _test_distributions(seed=0):
    """A test_distributions section of fixed random predictions (60 % right)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), 50)
    names = distribution_sets.STANDARD
    subsets = distribution_sets.select_subsets(labels, names, 0, C)
    right = rng.random((1 + len(names), K + 1, labels.size)) < 0.6
    preds = np.where(right, labels, (labels + 1) % C)
    masks = _info().group_masks("paper")
    section = test_distributions.distribution_results(preds, labels, subsets, masks)
    return {"names": list(names), "distributions": section}


def _analysis_json():
    run = {
        "label": "toy",
        "dataset": "toy",
        "eval_split": "test",
        "num_classes": C,
        "num_experts": K,
        "class_names": [f"c{i}" for i in range(C)],
        "best_expert": 1,
        "checkpoint": {"kind": "checkpoints", "step": 6, "epoch": 3},
        "aggregation": "mean_logits",
        **_summary(),
    }
    run["test_distributions"] = _test_distributions()
    single = {**run, "label": "toy_k1", "num_experts": 1, "kl_experts": None}
    single["test_distributions"] = _test_distributions(seed=1)
    pair = {
        "runs": ["toy", "toy_k1"],
        "same_recipe": True,
        **analysis_pass.kl_between(np.arange(C, dtype=float), np.full(C, 2.0), _info()),
    }
    return {"runs": [run, single], "kl_between_runs": [pair]}


def test_every_figure_is_drawn_from_the_json(tmp_path):
    body = _analysis_json()
    written = plots.plot_all(body, str(tmp_path))
    names = sorted(os.path.basename(p) for p in written)
    assert names == sorted([*plots.FIGURES, "confusion_toy.png", "confusion_toy_k1.png"])
    assert len(plots.FIGURES) == 7
    for path in written:
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # Fig. 1 / 5b compare the experts of the K=3 run and the two seeds.
    assert [name for name, _ in plots.kl_curves(body)] == [
        "toy: between its experts",
        "toy vs toy_k1 (two seeds)",
    ]
    json.dumps(body)  # every plotted number is JSON-serialisable
    assert plots.setting_caption(body) == (
        "checkpoint: latest (step 6, epoch 3); ensemble: mean of logits"
    )


def test_head_to_tail_order_is_by_training_count_then_index():
    assert plots.head_to_tail([5, 50, 50, 500]).tolist() == [3, 1, 2, 0]


def test_per_class_image_for_tensorboard():
    correct = np.array([[3, 2, 1, 0, 0, 0]] * (K + 1), np.float64)
    totals = np.array([4, 4, 4, 4, 2, 0], np.float64)

    class Config:
        group_rule = "official"

    image = plots.per_class_image(correct, totals, _info(), Config())
    assert image.dtype == np.uint8 and image.ndim == 4 and image.shape[0] == 1
    assert image.shape[-1] == 3 and image.std() > 0


# ---------------------------------------------------------------------------- bad input
def _workdir(path, dataset_name="cifar10_jpeg", **dataset):
    from tests.tiny import smoke_config

    config = smoke_config(**{"dataset.name": dataset_name})
    for key, value in dataset.items():
        config.dataset[key] = value
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config.to_dict(), f)
    return str(path)


def test_bad_input_is_one_error_before_any_compute_and_nothing_is_written(tmp_path):
    run = _workdir(tmp_path / "run")
    out = str(tmp_path / "out")
    with pytest.raises(CheckpointError, match="no config.json"):
        analyze.analyze([str(tmp_path / "missing")], out)
    other = _workdir(tmp_path / "other", num_classes=100)
    with pytest.raises(ConfigError, match=r"dataset.num_classes=100 .* same dataset"):
        analyze.analyze([run, other], out)
    os.makedirs(out)
    with open(os.path.join(out, "analysis.json"), "w") as f:
        f.write("{}")
    with pytest.raises(ConfigError, match="already holds analysis.json.*--overwrite"):
        analyze.analyze([run], out)
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    if not os.access(readonly, os.W_OK):  # root may write anywhere
        with pytest.raises(ConfigError, match="cannot be written"):
            analyze.prepare_out_dir(str(readonly / "sub"), overwrite=False)
    if os.path.isdir("/proc/self"):  # cannot be created even by root: refused before compute
        with pytest.raises(ConfigError, match="--out=/proc/ncl_x cannot be written"):
            analyze.prepare_out_dir("/proc/ncl_x", overwrite=False)
    with pytest.raises(ConfigError, match="--checkpoint='newest' is not valid"):
        checkpointing.parse_checkpoint("newest")
    assert checkpointing.parse_checkpoint("120") == 120
    assert open(os.path.join(out, "analysis.json")).read() == "{}"
    assert not os.path.exists(tmp_path / "out2")


def test_workdir_without_checkpoints_names_the_fix(tmp_path):
    run = _workdir(tmp_path / "run")
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        analyze.analyze([run], str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_compare_accepts_commas_and_repetition():
    assert analyze_program.compare_list(["a,b", "c"]) == ["a", "b", "c"]
    assert analyze_program.compare_list([]) == []


def test_labels_are_unique_and_file_safe():
    assert analyze.run_labels(["a/ncl", "b/ncl/", "c/x y"]) == ["ncl", "ncl_2", "x_y"]


def test_test_distributions_the_data_cannot_give_are_one_error_and_nothing_is_written(tmp_path):
    from ncl_jax.errors import DataError

    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "Toy_LT_uniform.txt").write_text("a.jpg 0\n")
    run = _workdir(tmp_path / "run", source="split_list", image_root=str(tmp_path))
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="--test_distributions_dir=DIR"):
        analyze.analyze([run], str(out), test_distributions=("uniform",))
    with pytest.raises(DataError, match=r"<Dataset>_forward2.txt: no file for test distribution"):
        analyze.analyze(
            [run],
            str(out),
            test_distributions=("forward2", "uniform"),
            distributions_dir=str(lists),
        )
    assert not out.exists()
