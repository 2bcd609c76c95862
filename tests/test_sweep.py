"""Sweeps (grid x seeds, restartable) and reports (mean/std per setting), ncl_jax.sweep and
ncl_jax.report: parsing and aggregation in-process, one end-to-end sweep on the smoke config."""

import csv
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ncl_jax import report as report_program
from ncl_jax.analysis import report
from ncl_jax.errors import ConfigError
from ncl_jax.training import sweep
from tests.programs import PROGRAM_TIMEOUT_S, run_program, start_program
from tests.tiny import config_file

REPO = pathlib.Path(__file__).resolve().parents[1]


def _smoke():
    return config_file("smoke")


# ----------------------------------------------------------------------------- sweep grid
def test_axes_are_typed_from_the_config_and_tied_fields_share_values():
    axes = sweep.parse_axes(
        [
            "loss.hard_ratio=0.1,0.3",
            "optim.milestones=(2,3),(3,)",
            "loss.distill_weight+loss.hard_distill_weight=0.2,0.6",
            "moco.enabled=True,false",
            "loss.hard_probs=restricted,masked_logits",
        ],
        _smoke(),
    )
    assert [a.values for a in axes] == [
        (0.1, 0.3),
        ((2, 3), (3,)),
        (0.2, 0.6),
        (True, False),
        ("restricted", "masked_logits"),
    ]
    assert axes[2].fields == ("loss.distill_weight", "loss.hard_distill_weight")


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "loss.hard_ratoi=0.1,0.2",
            "loss.hard_ratoi is not a config field; did you mean loss.hard_ratio?",
        ),
        ("loss.hard_ratio=0.1,abc", "'abc': not a valid float"),
        ("model.num_experts=3.5", "'3.5': not a valid int"),
        ("loss.hard_ratio=", "has no values"),
        ("loss.hard_ratio", "use FIELD=v1,v2"),
        ("loss.hard_ratio=0.1,0.1", "repeats a value"),
    ],
)
def test_bad_sweeps_are_one_config_error(spec, message):
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(")):
        sweep.parse_axes([spec], _smoke())


def test_plan_crosses_settings_subset_seeds_and_training_seeds(tmp_path):
    config = _smoke()
    axes = sweep.parse_axes(["loss.hard_ratio=0.2,0.4"], config)
    runs = sweep.plan(config, axes, seeds=3, subset_seeds=2, workdir=str(tmp_path))
    assert len(runs) == 2 * 2 * 3
    assert {(r.subset_seed, r.seed) for r in runs} == {(s, t) for s in (0, 1) for t in (42, 43, 44)}
    first = runs[0]
    assert first.workdir == str(tmp_path / "loss.hard_ratio=0.2" / "subset0_seed42")
    assert first.overrides() == [
        "--config.loss.hard_ratio=0.2",
        "--config.seed=42",
        "--config.dataset.subset_seed=0",
    ]
    with pytest.raises(ConfigError, match="--seeds=0"):
        sweep.plan(config, axes, seeds=0, subset_seeds=0, workdir=str(tmp_path))


def test_every_run_is_validated_before_any_starts(tmp_path):
    config = _smoke()
    axes = sweep.parse_axes(["model.num_experts=3,0"], config)
    runs = sweep.plan(config, axes, seeds=1, subset_seeds=0, workdir=str(tmp_path))
    with pytest.raises(ConfigError, match="model.num_experts=0"):
        sweep.validate_runs(config, runs)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- report
def _evaluation(top1s, ensemble, many=None):
    experts = [{"top1": t, "many": many, "medium": t, "few": None} for t in top1s]
    best = int(np.argmax(top1s))
    return {
        "experts": experts,
        "ensemble": {"top1": ensemble, "many": many, "medium": ensemble, "few": None},
        "best_single": {**experts[best], "expert": best},
    }


def _fake_run(root, name, *, ratio, seed, final=None, best=None, state="finished"):
    path = root / name
    path.mkdir(parents=True)
    config = {"seed": seed, "dataset": {"subset_seed": 0}, "loss": {"hard_ratio": ratio}}
    (path / "config.json").write_text(json.dumps(config))
    if state == "finished":
        result = {
            "final": final,
            "best_evals": {"ensemble": best, "single": best},
            "selection_split": "test",
        }
        (path / "result.json").write_text(json.dumps(result))
    elif state == "failed":
        (path / sweep.STATUS_FILE).write_text(json.dumps({"status": "failed"}))


def test_report_averages_finished_runs_per_setting_and_lists_the_others(tmp_path):
    _fake_run(
        tmp_path,
        "a/s42",
        ratio=0.2,
        seed=42,
        final=_evaluation([10.0, 20.0, 30.0], 40.0, 50.0),
        best=_evaluation([11, 22, 33], 44.0),
    )
    _fake_run(
        tmp_path,
        "a/s43",
        ratio=0.2,
        seed=43,
        final=_evaluation([20.0, 30.0, 40.0], 50.0, 70.0),
        best=_evaluation([21, 32, 43], 54.0),
    )
    _fake_run(tmp_path, "a/s44", ratio=0.2, seed=44, state="unfinished")
    _fake_run(
        tmp_path,
        "b/s42",
        ratio=0.4,
        seed=42,
        final=_evaluation([5.0, 6.0, 7.0], 8.0),
        best=_evaluation([5, 6, 9], 8.5),
    )
    _fake_run(tmp_path, "b/s43", ratio=0.4, seed=43, state="failed")
    markdown, _ = report.write_report(str(tmp_path))
    rows = list(csv.DictReader((tmp_path / report.REPORT_CSV).open()))
    assert list(rows[0]) == report.columns(["loss.hard_ratio"])
    a, b = rows
    assert (a["loss.hard_ratio"], a["runs"], a["unfinished"], a["failed"]) == ("0.2", "2", "1", "0")
    assert (b["runs"], b["failed"]) == ("1", "1")
    assert float(a["last_ensemble_top1_mean"]) == pytest.approx(45.0)
    assert float(a["last_ensemble_top1_std"]) == pytest.approx(np.std([40.0, 50.0], ddof=1))
    assert float(a["last_single_top1_mean"]) == pytest.approx(35.0)
    assert float(a["last_experts_mean_top1_mean"]) == pytest.approx(np.mean([20.0, 30.0]))
    assert float(a["last_ensemble_many_mean"]) == pytest.approx(60.0)
    assert a["last_ensemble_few_mean"] == ""  # no few-shot class in the test set
    assert float(a["best_ensemble_top1_mean"]) == pytest.approx(49.0)
    assert float(a["best_single_top1_mean"]) == pytest.approx(38.0)
    assert b["last_ensemble_top1_std"] == "" and a["selection_split"] == "test"
    assert "2 (+1 unfinished, 0 failed)" in markdown and "selected on the `test` split" in markdown


def test_report_shows_each_settings_model_cost_and_leaves_runs_without_it_empty(tmp_path):
    evaluation = _evaluation([10.0, 20.0], 30.0)
    for name, ratio in (("a", 0.2), ("b", 0.4)):
        _fake_run(tmp_path, name, ratio=ratio, seed=0, final=evaluation, best=evaluation)
    result_a = json.loads((tmp_path / "a" / "result.json").read_text())
    result_a["model_cost"] = {
        "params_ensemble": 1_410_462,
        "flops_ensemble_forward": 3.8e8,
        "flops_train_step": 1.2e9,
    }
    (tmp_path / "a" / "result.json").write_text(json.dumps(result_a))
    markdown, _ = report.write_report(str(tmp_path))
    a, b = csv.DictReader((tmp_path / report.REPORT_CSV).open())
    assert (a["params"], a["forward_gflops"], a["train_step_gflops"]) == ("1410462", "0.38", "1.2")
    assert (b["params"], b["forward_gflops"], b["train_step_gflops"]) == ("", "", "")
    assert "| 1.41 M | 0.38 | 1.2 |" in markdown and "| - | - | - |" in markdown


def test_report_cli_takes_the_directory_as_argument_or_workdir(tmp_path, capsys):
    from absl import flags

    _fake_run(
        tmp_path,
        "a/s42",
        ratio=0.2,
        seed=42,
        final=_evaluation([1.0], 2.0),
        best=_evaluation([1.0], 2.0),
    )
    flags.FLAGS.unparse_flags()
    if "workdir" not in flags.FLAGS:
        report_program._define_flags()
    flags.FLAGS(["ncl-report", f"--workdir={tmp_path}"])
    try:
        report_program.main(["ncl-report"])
        assert (tmp_path / report.REPORT_CSV).exists()
        with pytest.raises(SystemExit):
            report_program.main(["ncl-report", str(tmp_path), "other"])
        assert "give one directory of runs" in capsys.readouterr().err
    finally:
        flags.FLAGS.unparse_flags()


def test_report_on_a_directory_without_runs_is_one_error(tmp_path):
    with pytest.raises(ConfigError, match="no runs under"):
        report.write_report(str(tmp_path))
    with pytest.raises(ConfigError, match="is not a directory"):
        report.write_report(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- end to end
TFDS_DIR = os.environ.get("TFDS_DATA_DIR", "")


@pytest.mark.slow
@pytest.mark.skipif(
    not os.path.isdir(os.path.join(TFDS_DIR, "cifar10_jpeg")),
    reason=f"offline cifar10_jpeg not found under TFDS_DATA_DIR={TFDS_DIR!r}",
)
def test_sweep_of_two_settings_resumes_a_killed_run_and_reports(tmp_path):
    """One seed per setting: crossing seeds and averaging them are the fast tests above; this
    one is about processes (a killed sweep and its training subprocess, resumed)."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    workdir = tmp_path / "sweep"
    base = [
        sys.executable,
        "-m",
        "ncl_jax.sweep",
        "--config=configs/smoke.py",
        f"--workdir={workdir}",
        "--sweep=loss.hard_ratio=0.2,0.4",
        "--seeds=1",
        "--config.log_every_steps=100",
    ]
    killed_run = workdir / "loss.hard_ratio=0.2" / "subset0_seed42"
    first = start_program(
        [*base, "--task=0"],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + PROGRAM_TIMEOUT_S
    while not (killed_run / "checkpoints" / "3").is_dir():
        assert first.poll() is None and time.time() < deadline, "no checkpoint before the kill"
        time.sleep(0.05)
    os.killpg(first.pid, signal.SIGKILL)  # the sweep and its training subprocess
    first.wait()
    assert not (killed_run / "result.json").exists()

    listed = run_program([*base, "--list"], env=env)
    assert listed.returncode == 0, listed.stderr[-2000:]
    states = [line.split()[0] for line in listed.stdout.strip().splitlines()]
    assert states == ["unfinished", "pending"]

    done = run_program(base, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "2 trained, 0 already finished, 0 failed" in done.stdout
    assert "Resuming from" in (killed_run / "train.log").read_text()
    again = run_program(base, env=env)
    assert "0 trained, 2 already finished" in again.stdout  # restartable: nothing retrained

    made = run_program([sys.executable, "-m", "ncl_jax.report", str(workdir)], env=env)
    assert made.returncode == 0, made.stderr[-2000:]
    rows = list(csv.DictReader((workdir / report.REPORT_CSV).open()))
    assert [(r["loss.hard_ratio"], r["runs"]) for r in rows] == [("0.2", "1"), ("0.4", "1")]
    assert (workdir / report.REPORT_MD).read_text().startswith("| loss.hard_ratio |")


def test_the_convergence_study_script_runs_the_sweeps_it_is_asked_for(tmp_path):
    """launch/convergence_study.sh with a stand-in python that records its arguments: the
    default rows alternate seed by seed; ROW:SEED runs that seed of the row alone (its
    ncl-sweep --task); an unknown row or seed is one error before anything runs."""
    calls = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/usr/bin/env bash\necho "$*" >> {calls}\n')
    fake.chmod(0o755)

    def study(*rows: str) -> tuple[int, list[str]]:
        calls.write_text("")
        env = {**os.environ, "PYTHON": str(fake)}
        done = run_program(
            ["bash", "launch/convergence_study.sh", str(tmp_path / "out"), *rows], env=env
        )
        runs = []
        for line in calls.read_text().splitlines():
            args = line.split()
            ablation = args[2].split("ablation=")[1]
            runs.append(
                " ".join([ablation, *[a for a in args if a.startswith(("--seeds", "--task"))]])
            )
        return done.returncode, runs

    assert study() == (
        0,
        ["baseline --seeds=1", "ncl --seeds=1", "baseline --seeds=2", "ncl --seeds=2"],
    )
    assert study("bsce:43", "nil") == (
        0,
        ["nil --seeds=1", "baseline --seeds=2 --task=1", "nil --seeds=2"],
    )
    assert study("ncl:42") == (0, ["ncl --seeds=1 --task=0"])
    assert study("ncl:44") == (2, [])
    assert study("resnet") == (2, [])
