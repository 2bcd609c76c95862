"""Learning curves of the runs below a directory (`ncl-report DIR --curves`): per-epoch rows
read back from the evaluations the training loop logs, grouped into settings over seeds."""

import csv
import json

import pytest
from clu import metric_writers

from ncl_jax.analysis import learning_curves
from ncl_jax.core.metrics import eval_scalars
from ncl_jax.errors import ConfigError

STEPS_PER_EPOCH = 7


def _body(top1s, ensemble):
    experts = [{"top1": t, "many": t + 1, "medium": t - 1, "few": None} for t in top1s]
    best = max(range(len(top1s)), key=top1s.__getitem__)
    return {
        "experts": experts,
        "ensemble": {"top1": ensemble, "many": ensemble + 1, "medium": ensemble - 1, "few": None},
        "best_single": {**experts[best], "expert": best},
    }


def _run(path, *, seed, experts, epochs, eval_every=1, distill=0.6):
    """A workdir whose events hold one evaluation per `eval_every` epochs, written the way the
    training loop writes them (metrics.eval_scalars through clu's writer)."""
    path.mkdir(parents=True)
    config = {
        "seed": seed,
        "eval_every_epochs": eval_every,
        "dataset": {"subset_seed": 0},
        "loss": {"distill_weight": distill},
        "model": {"num_experts": len(experts(1))},
    }
    (path / "config.json").write_text(json.dumps(config))
    writer = metric_writers.create_default_writer(str(path))
    for epoch in range(eval_every, epochs + 1, eval_every):
        top1s = experts(epoch)
        writer.write_scalars(
            epoch * STEPS_PER_EPOCH, eval_scalars(_body(top1s, sum(top1s) / len(top1s) + 2))
        )
    writer.flush()
    writer.close()


def test_rows_are_one_per_evaluated_epoch_with_settings_grouped_over_seeds(tmp_path):
    for seed in (42, 43):
        _run(
            tmp_path / "ncl" / "default" / f"subset0_seed{seed}",
            seed=seed,
            experts=lambda e, s=seed: [10.0 * e, 10.0 * e + 2, 10.0 * e + s - 40],
            epochs=4,
            eval_every=2,
        )
    _run(tmp_path / "bsce_run", seed=42, experts=lambda e: [5.0 * e], epochs=3, distill=0.0)
    rows = learning_curves.collect(str(tmp_path))
    by_run = {}
    for row in rows:
        by_run.setdefault(row["run"], []).append(row)
    assert sorted(by_run) == [
        "bsce_run",
        "ncl/default/subset0_seed42",
        "ncl/default/subset0_seed43",
    ]
    ncl42 = by_run["ncl/default/subset0_seed42"]
    assert [(r["epoch"], r["step"]) for r in ncl42] == [(2, 14), (4, 28)]  # every 2nd epoch
    assert {r["setting"] for r in rows if r["run"].startswith("ncl")} == {"ncl"}  # seeds grouped
    assert {r["setting"] for r in rows if r["run"] == "bsce_run"} == {"bsce_run"}
    epoch4 = ncl42[1]
    assert epoch4["single_top1"] == pytest.approx(42.0)  # the best expert at that epoch
    assert epoch4["experts_mean_top1"] == pytest.approx((40 + 42 + 42) / 3)
    assert epoch4["ensemble_top1"] == pytest.approx((40 + 42 + 42) / 3 + 2)
    assert epoch4["ensemble_many"] == pytest.approx(epoch4["ensemble_top1"] + 1)
    assert epoch4["ensemble_few"] is None  # no few-shot class: never logged, never invented
    assert [r["epoch"] for r in by_run["bsce_run"]] == [1, 2, 3]


def test_write_curves_writes_the_csv_and_both_figures(tmp_path):
    _run(tmp_path / "a", seed=1, experts=lambda e: [e, e + 1.0], epochs=4)
    _run(tmp_path / "b", seed=1, experts=lambda e: [2.0 * e], epochs=4, distill=0.0)
    paths = learning_curves.write_curves(str(tmp_path))
    assert [p.rsplit("/", 1)[-1] for p in paths] == [
        "curves.csv",
        "curves_top1.png",
        "curves_groups.png",
    ]
    with open(paths[0]) as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == learning_curves.columns()
    assert len(table) == 8 and table[0]["ensemble_few"] == ""
    for png in paths[1:]:
        assert open(png, "rb").read(4) == b"\x89PNG"


def test_directories_without_runs_or_evaluations_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no runs under"):
        learning_curves.collect(str(tmp_path))
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "config.json").write_text(json.dumps({"seed": 1}))
    with pytest.raises(ConfigError, match="has logged an evaluation yet"):
        learning_curves.collect(str(tmp_path))


def test_setting_labels_drop_the_sweep_seed_and_default_directories(tmp_path):
    root = str(tmp_path)
    label = learning_curves.setting_label
    assert label(root, f"{root}/ncl/default/subset0_seed42") == "ncl"
    assert label(root, f"{root}/beta/loss.hard_ratio=0.3/subset1_seed43") == (
        "beta/loss.hard_ratio=0.3"
    )
    assert label(root, f"{root}/bsce_seed43") == "bsce_seed43"
    assert label(root, root) == tmp_path.name


def test_the_mean_line_says_which_epochs_it_covers_when_seeds_have_different_lengths():
    full = {e: float(e) for e in range(1, 101)}
    assert learning_curves.mean_label({"s42": full}) == ""
    # One run: its seed, when known (a setting run with one seed is told apart from another's).
    assert learning_curves.mean_label({"s42": full}, {"s42": 42}) == ", seed 42"
    assert learning_curves.mean_label({"s42": full}, {"s42": None}) == ""
    assert learning_curves.mean_label({"s42": full, "s43": dict(full)}) == ", mean of 2 seeds"
    # A second seed that has trained 2 epochs: the thick line covers epochs 1-2 only.
    assert (
        learning_curves.mean_label({"s42": full, "s43": {1: 1.0, 2: 2.0}})
        == ", mean of 2 seeds over epochs 1-2"
    )
    assert learning_curves.mean_label({"a": {1: 1.0}, "b": {2: 2.0}}) == (
        ", mean of 2 seeds (no epoch in common)"
    )


def test_the_groups_figure_has_a_panel_only_for_groups_with_test_images(tmp_path):
    # CIFAR-10-LT has no few-shot class: its panel would be an empty axis.
    _run(tmp_path / "a", seed=1, experts=lambda e: [e, e + 1.0], epochs=2)
    rows = learning_curves.collect(str(tmp_path))
    assert learning_curves.present_groups(rows) == ("many", "medium")
    for row in rows:
        row["ensemble_few"] = 3.0
    assert learning_curves.present_groups(rows) == ("many", "medium", "few")
