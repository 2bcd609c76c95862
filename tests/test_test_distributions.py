"""Test-agnostic evaluation (ncl_jax.evaluation.test_distributions): the distributions' class
counts and image subsets, the prior adjustment, per-image predictions of a real pass, and the
accuracies, each against numpy written here; the input errors."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncl_jax import cli
from ncl_jax.config import builders
from ncl_jax.errors import ConfigError, DataError
from ncl_jax.evaluation import distribution_sets as ds
from ncl_jax.evaluation import test_distributions as td
from tests.tiny import IMAGE, class_counts, smoke_config, tiny_config

C = 10


def _numpy_counts(name, n_max, num_classes):
    """forward<IF>: floor(n_max * IF^(-c/(C-1))), class 0 the head; backward reversed."""
    if name == "uniform":
        return np.full(num_classes, n_max)
    factor = float(name.removeprefix("forward").removeprefix("backward"))
    c = np.arange(num_classes)
    counts = np.floor(n_max * factor ** (-c / (num_classes - 1))).astype(int)
    return counts if name.startswith("forward") else counts[::-1]


def test_agnostic_is_the_eleven_in_plotting_order_and_lists_are_sorted_the_same_way():
    assert ds.parse_test_distributions("agnostic") == ds.STANDARD
    assert ds.STANDARD[0] == "forward50" and ds.STANDARD[5] == "uniform"
    assert ds.STANDARD[-1] == "backward50" and len(ds.STANDARD) == 11
    got = ds.parse_test_distributions("backward10,uniform,forward50,forward3")
    assert got == ("forward50", "forward3", "uniform", "backward10")
    assert ds.parse_test_distributions(None) is None


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("sideways10", "'sideways10' is not a test distribution"),
        ("forward1", "'forward1' is not a test distribution"),
        ("forward50,forward50", "names a distribution twice"),
        ("uniform,", None),  # a trailing comma is harmless
    ],
)
def test_bad_distribution_names_are_one_config_error(spec, fragment):
    if fragment is None:
        assert ds.parse_test_distributions(spec) == ("uniform",)
        return
    with pytest.raises(ConfigError, match=fragment):
        ds.parse_test_distributions(spec)


@pytest.mark.parametrize("name", ds.STANDARD)
@pytest.mark.parametrize("num_classes, n_max", [(10, 1000), (100, 100)])
def test_class_counts_follow_the_training_rule_forward_and_reversed(name, num_classes, n_max):
    available = np.full(num_classes, n_max)
    available[3] += 7  # n_max is the smallest class
    got = ds.distribution_counts(name, available)
    np.testing.assert_array_equal(got, _numpy_counts(name, n_max, num_classes))


def test_a_distribution_that_empties_a_class_is_one_data_error():
    with pytest.raises(DataError, match="forward50 leaves class 7 with 0 images"):
        ds.distribution_counts("forward50", np.full(10, 20))


def test_subsets_are_per_class_seeded_deterministic_and_nested():
    rng = np.random.default_rng(3)
    labels = rng.permutation(np.repeat(np.arange(C), 60))
    names = ("forward10", "forward2", "uniform", "backward5")
    subsets = ds.select_subsets(labels, names, seed=5, num_classes=C)
    again = ds.select_subsets(labels, names[::-1], seed=5, num_classes=C)
    other = ds.select_subsets(labels, names, seed=6, num_classes=C)
    for name in names:
        np.testing.assert_array_equal(subsets[name], again[name])  # not on the other names
        assert len(np.unique(subsets[name])) == len(subsets[name])
        counts = np.bincount(labels[subsets[name]], minlength=C)
        np.testing.assert_array_equal(counts, _numpy_counts(name, 60, C))
        assert not np.array_equal(subsets[name], other[name]) or name == "uniform"
    assert len(subsets["uniform"]) == len(labels)
    # One permutation per class: a class's images in forward10 are among those of forward2.
    assert set(subsets["forward10"]) <= set(subsets["forward2"])
    # The choice within a class is the seeded permutation (numpy's Generator, classes in order).
    perm = np.random.default_rng(5)
    first = [perm.permutation(np.flatnonzero(labels == c)) for c in range(C)]
    want = np.sort(
        np.concatenate([first[c][:n] for c, n in enumerate(_numpy_counts("backward5", 60, C))])
    )
    np.testing.assert_array_equal(subsets["backward5"], want)


def test_prior_adjustment_is_log_test_minus_log_fit_prior():
    train = class_counts()
    test = np.stack([np.arange(1, C + 1), np.r_[np.zeros(1), np.ones(C - 1)]])
    ce = td.prior_adjustments(test, train, balanced=False)
    bal = td.prior_adjustments(test, train, balanced=True)
    log_test = np.log(test[0] / test[0].sum())
    np.testing.assert_allclose(ce[0], log_test - np.log(train / train.sum()), rtol=1e-6)
    np.testing.assert_allclose(bal[0], log_test, rtol=1e-6)
    assert bal[1, 0] == -np.inf and np.isfinite(bal[1, 1:]).all()


@pytest.mark.parametrize("aggregation", ["mean_logits", "mean_probs"])
def test_predictions_are_the_argmax_of_raw_and_adjusted_experts_and_ensemble(aggregation):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 16, C)).astype(np.float32) * 2
    shifts = rng.normal(size=(2, C)).astype(np.float32) * 3
    got = np.asarray(td.predictions(jnp.asarray(logits), jnp.asarray(shifts), aggregation))
    assert got.shape == (3, 4, 16)
    for d, shift in enumerate([np.zeros(C, np.float32), *shifts]):
        z = logits + shift
        if aggregation == "mean_logits":
            scores = z.mean(0)
        else:
            p = np.exp(z - z.max(-1, keepdims=True))
            scores = (p / p.sum(-1, keepdims=True)).mean(0)
        np.testing.assert_array_equal(got[d, :3], z.argmax(-1))
        np.testing.assert_array_equal(got[d, 3], scores.argmax(-1))


def test_accuracies_on_fixed_predictions_match_numpy():
    rng = np.random.default_rng(1)
    n, k = 300, 2
    labels = rng.integers(0, C, size=n)
    preds = np.where(rng.random((3, k + 1, n)) < 0.6, labels, rng.integers(0, C, (3, k + 1, n)))
    subsets = {"forward2": np.arange(0, n, 2), "uniform": np.arange(n)}
    masks = {
        "many": np.arange(C) < 3,
        "medium": (np.arange(C) >= 3) & (np.arange(C) < 8),
        "few": np.arange(C) >= 8,
    }
    out = td.distribution_results(preds, labels, subsets, masks)
    for d, (name, positions) in enumerate(subsets.items()):
        y = labels[positions]
        body = out[name]
        assert body["num_examples"] == len(positions)
        assert body["class_counts"] == np.bincount(y, minlength=C).tolist()
        for which, p in [("raw", 0), ("adjusted", 1 + d)]:
            scored = body if which == "raw" else body["prior_adjusted"]
            hits = preds[p][:, positions] == y  # [K + 1, n]
            models = [*scored["experts"], scored["ensemble"]]
            for m, scores in enumerate(models):
                assert scores["top1"] == pytest.approx(100 * hits[m].mean())
                few = masks["few"][y]
                assert scores["few"] == pytest.approx(100 * hits[m][few].mean())
            best = int(np.argmax(hits[:k].mean(1)))
            assert scored["best_single"]["expert"] == best


@pytest.mark.slow  # fast tier under 2 min: heavy compile or a real dataset
def test_a_real_pass_keeps_every_images_prediction_at_its_position():
    """8 devices, 3 batches of 16 with padding: the store puts each image's argmax where
    the split has it, and the sums match the plain evaluation step."""
    config = tiny_config(moco=False)
    cfg = builders.make_step_config(config, class_counts=class_counts(), steps_per_epoch=1)
    state = builders.create_state(config, cfg)
    rng = np.random.default_rng(0)
    n, global_batch = 40, 16
    images = rng.normal(size=(n, IMAGE, IMAGE, 3)).astype(np.float32)
    labels = rng.integers(0, C, size=n).astype(np.int32)
    batches = []
    for g in range(3):
        pos = g * global_batch + np.arange(global_batch)
        valid = pos < n
        idx = np.where(valid, pos, 0)
        batches.append(
            {
                "image": images[idx].reshape(8, 2, IMAGE, IMAGE, 3),
                "label": labels[idx].reshape(8, 2),
                "mask": valid.reshape(8, 2),
            }
        )
    shifts = np.stack([np.zeros(C), np.linspace(-2, 2, C)]).astype(np.float32)
    from ncl_jax.core.train_step import eval_step, pmap_eval_counts_step, replicate
    from ncl_jax.evaluation.evaluate import evaluation_counts

    replicated = replicate(state)
    sums, store = td.run_prediction_pass(
        td.pmap_prediction_step(cfg), replicated, batches, shifts, global_batch=global_batch
    )
    preds = store.result(n)
    logits = np.asarray(jax.jit(lambda s, x: eval_step(s, {"image": x}, cfg=cfg))(state, images))
    np.testing.assert_array_equal(preds[0, :3], logits.argmax(-1))
    np.testing.assert_array_equal(preds[2, :3], (logits + shifts[1]).argmax(-1))
    np.testing.assert_array_equal(preds[0, 3], logits.mean(0).argmax(-1))
    plain = evaluation_counts(pmap_eval_counts_step(cfg), replicated, batches)
    for key in plain:
        np.testing.assert_allclose(sums[key], plain[key], rtol=1e-6)


def _write_lists(folder, names, lines):
    folder.mkdir(exist_ok=True)
    for name in names:
        (folder / f"Toy_LT_{name}.txt").write_text("".join(lines[name]))


def test_list_files_are_read_as_one_union_and_a_missing_one_is_named(tmp_path):
    lists = tmp_path / "lists"
    lines = {
        "forward2": ["a/0.jpg 0\n", "a/1.jpg 0\n", "b/2.jpg 1\n"],
        "uniform": ["a/0.jpg 0\n", "b/2.jpg 1\n", "b/3.jpg 1\n"],
    }
    _write_lists(lists, lines, lines)
    paths, labels, subsets = ds.read_list_files(str(lists), ("forward2", "uniform"), 2)
    assert paths == ["a/0.jpg", "a/1.jpg", "b/2.jpg", "b/3.jpg"]
    assert labels.tolist() == [0, 0, 1, 1]
    assert subsets["forward2"].tolist() == [0, 1, 2] and subsets["uniform"].tolist() == [0, 2, 3]
    with pytest.raises(DataError) as err:
        ds.read_list_files(str(lists), ("forward2", "backward2"), 2)
    assert "Toy_LT" not in str(err.value) and "<Dataset>_backward2.txt" in str(err.value)
    assert str(lists) in str(err.value)
    (lists / "Toy_LT_backward2.txt").write_text("a/0.jpg 1\n")
    with pytest.raises(DataError, match="lists a/0.jpg as class 1"):
        ds.read_list_files(str(lists), ("forward2", "backward2"), 2)


@pytest.mark.parametrize(
    "overrides, names, list_dir, fragment",
    [
        ({"dataset.source": "split_list"}, ("uniform",), None, "--test_distributions_dir=DIR"),
        ({}, ("uniform",), "somewhere", "is for split-list datasets"),
        ({}, None, "somewhere", "needs --test_distributions"),
        ({"dataset.source": "image_folder"}, ("uniform",), "x", "not source='image_folder'"),
    ],
)
def test_requests_the_dataset_cannot_serve_fail_with_one_line(
    capsys, overrides, names, list_dir, fragment
):
    config = smoke_config(**overrides)
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(lambda: td.check_request(config, names, list_dir))
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error:") and fragment in line, line


def test_list_file_distributions_are_scored_on_one_union_list_of_their_images(
    tmp_path, identity_view
):
    from ncl_jax import data
    from tests.data_helpers import read_ids, write_images

    train = [f"train/c{c}/{i}.png" for c in range(3) for i in range(8)]
    evals = [f"val/c{c}/{i}.png" for c in range(3) for i in range(4)]
    write_images(tmp_path / "img", train)
    write_images(tmp_path / "img", evals)  # image k of evals carries id k
    (tmp_path / "train.txt").write_text("".join(f"{p} {i // 8}\n" for i, p in enumerate(train)))
    (tmp_path / "eval.txt").write_text("".join(f"{p} {i // 4}\n" for i, p in enumerate(evals)))
    lists = tmp_path / "lists"
    picks = {"forward2": [5, 0, 1, 2, 4, 8], "backward2": [9, 10, 11, 8, 4, 0]}
    _write_lists(
        lists,
        picks,
        {n: [f"{evals[k]} {k // 4}\n" for k in ks] for n, ks in picks.items()},
    )
    config = smoke_config(
        **{
            "dataset.source": "split_list",
            "dataset.name": "toy_lt",
            "dataset.num_classes": 3,
            "dataset.imbalance_factor": 0.0,
            "dataset.image_root": str(tmp_path / "img"),
            "dataset.train_list": str(tmp_path / "train.txt"),
            "dataset.eval_list": str(tmp_path / "eval.txt"),
            "dataset.image_size": 8,
            "dataset.eval_max_examples": 0,
        }
    )
    names = ("forward2", "backward2")
    with td.distribution_plan(config, names, list_dir=str(lists)) as plan:
        assert not plan.shares_eval_pass and plan.record["seed"] is None
        assert config.dataset.eval_list == str(tmp_path / "eval.txt")  # the run's is untouched
        union = [5, 0, 1, 2, 4, 8, 9, 10, 11]  # first appearance order
        np.testing.assert_array_equal(plan.labels, np.array(union) // 4)
        assert plan.subsets["backward2"].tolist() == [6, 7, 8, 5, 4, 1]
        np.testing.assert_array_equal(plan.class_counts(), [[3, 2, 1], [1, 1, 4]])
        batches = data.eval_iterator(plan.config.dataset, global_batch_size=12, num_local_devices=2)
        (batch,) = list(batches)
        ids = read_ids(batch["image"]).reshape(-1)[batch["mask"].reshape(-1)]
        assert ids.tolist() == union
        workspace = os.path.dirname(plan.config.dataset.eval_list)
    assert not os.path.exists(workspace)
