"""The training program end to end on the smoke config (real offline CIFAR-10).

Runs `python -m ncl_jax.main` in subprocesses, as users do: a run killed with SIGKILL and then
stopped with SIGTERM ends, after resuming, with exactly the parameters of an uninterrupted
run; the checkpoint evaluates to the JSON contract; a damaged or foreign workdir is refused
untouched. Bad input caught before any compute is tested in-process in test_cli.py.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ncl_jax.config.model_cost import model_cost
from ncl_jax.evaluation import plots
from ncl_jax.evaluation.tail_metrics import TAIL_METRICS
from ncl_jax.training.checkpointing import RunCheckpoints
from ncl_jax.training.saved_runs import read_run_config
from tests.programs import PROGRAM_TIMEOUT_S, run_program, start_program

REPO = pathlib.Path(__file__).resolve().parents[1]
TFDS_DIR = os.environ.get("TFDS_DATA_DIR", "")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.isdir(os.path.join(TFDS_DIR, "cifar10_jpeg")),
        reason=f"offline cifar10_jpeg not found under TFDS_DATA_DIR={TFDS_DIR!r}",
    ),
]

# 4 epochs of 3 steps: enough for a kill after the first checkpoint and a SIGTERM mid-epoch.
LONGER = ("--config.num_epochs=4", "--config.optim.milestones=(3,)")


@pytest.fixture(scope="module")
def env():
    """Subprocess environment: 8 CPU devices, offline data, the programs' compilation cache
    (conftest)."""
    out = dict(os.environ)
    out["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    out["PYTHONPATH"] = str(REPO)
    return out


def _main_cmd(workdir, *overrides):
    return [
        sys.executable,
        "-m",
        "ncl_jax.main",
        "--config=configs/smoke.py",
        f"--workdir={workdir}",
        *overrides,
    ]


def _run(cmd, env):
    return run_program(cmd, env=env)


def _start(cmd, env):
    return start_program(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _wait_for_checkpoint(workdir, step, proc, timeout=PROGRAM_TIMEOUT_S):
    """Blocks until <workdir>/checkpoints/<step> is committed (Orbax renames on commit)."""
    path = pathlib.Path(workdir, "checkpoints", str(step))
    deadline = time.time() + timeout
    while not path.is_dir():
        assert proc.poll() is None, f"run ended (rc {proc.returncode}) before step {step}"
        assert time.time() < deadline, f"no checkpoint {path} after {timeout}s"
        time.sleep(0.02)


def _final_state(workdir):
    """(step, state as saved: nested dicts of numpy arrays) of the newest checkpoint."""
    manager = ocp.CheckpointManager(
        pathlib.Path(workdir, "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_names=("state", "meta"),
    )
    step = manager.latest_step()
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return step, restored["state"]


def _meta(workdir, step):
    manager = ocp.CheckpointManager(
        pathlib.Path(workdir, "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_names=("state", "meta"),
    )
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    manager.close()
    return dict(meta)


def _assert_same_tree(a, b, exact=True):
    leaves_a = jax.tree_util.tree_leaves_with_path(a)
    leaves_b = jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for (path, x), y in zip(leaves_a, leaves_b, strict=True):
        if exact:
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(path))
        else:
            np.testing.assert_allclose(
                np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5, err_msg=str(path)
            )


# A program run with resolve_config wrapped to count its calls (patched before any ncl_jax
# module binds it).
_COUNTING = """
import atexit, sys
from ncl_jax.config import variants
calls = []
real = variants.resolve_config
variants.resolve_config = lambda config: calls.append(1) or real(config)
atexit.register(lambda: print(f"resolve_config calls: {len(calls)}", file=sys.stderr))
import runpy
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _counting(cmd):
    """`cmd` (python -m MODULE ARGS) run with config.variants.resolve_config counted: its
    stderr ends with "resolve_config calls: N"."""
    assert cmd[:2] == [sys.executable, "-m"], cmd
    return [sys.executable, "-c", _COUNTING, *cmd[2:]]


@pytest.fixture(scope="module")
def uninterrupted(env, tmp_path_factory):
    """The 4-epoch reference run: (workdir, its summary), its resolve_config calls counted."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    result = _run(_counting(_main_cmd(workdir, *LONGER)), env)
    assert result.returncode == 0, result.stderr[-3000:]
    (workdir / "stderr.txt").write_text(result.stderr)
    return workdir, json.loads(result.stdout.strip().splitlines()[-1])


def test_kill_then_sigterm_then_resume_ends_with_identical_parameters(env, uninterrupted, tmp_path):
    reference_dir, summary = uninterrupted
    assert summary["step"] == 12 and not summary["preempted"]
    workdir = tmp_path / "interrupted"

    killed = _start(_main_cmd(workdir, *LONGER), env)
    _wait_for_checkpoint(workdir, 3, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (workdir / "checkpoints" / "12").exists(), "the run finished before the kill"

    stopped = _start(_main_cmd(workdir, *LONGER), env)
    _wait_for_checkpoint(workdir, 6, stopped)
    stopped.send_signal(signal.SIGTERM)  # lands mid-epoch 3 (or at its start)
    assert stopped.wait(timeout=PROGRAM_TIMEOUT_S) == 0
    steps = RunCheckpoints(workdir, read_only=True).steps()
    assert max(steps) < 12, f"SIGTERM did not stop the run early: {steps}"
    for step in steps:  # every kind of checkpoint records whole epochs completed (3 steps each)
        assert _meta(workdir, step)["epoch"] == step // 3, (step, _meta(workdir, step))

    resumed = _run(_main_cmd(workdir, *LONGER), env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    step_a, state_a = _final_state(reference_dir)
    step_b, state_b = _final_state(workdir)
    assert step_a == step_b == 12
    _assert_same_tree(state_a, state_b, exact=True)


def test_evaluate_cli_writes_the_json_contract(env, uninterrupted):
    workdir, summary = uninterrupted
    env1 = dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=1")  # trained on 8
    result = _run(
        _counting([sys.executable, "-m", "ncl_jax.evaluate", f"--workdir={workdir}"]), env1
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ensemble" in result.stdout and "best single" in result.stdout
    assert "resolve_config calls: 1" in result.stderr  # the saved config, resolved once
    with open(workdir / "eval_12.json") as f:
        report = json.load(f)
    assert report["step"] == 12 and report["num_examples"] == 256
    assert report["checkpoint"] == "checkpoints" and "not selected" in report["selection"]
    assert len(report["experts"]) == 3
    for entry in [*report["experts"], report["ensemble"], report["best_single"]]:
        assert set(entry) >= {"top1", "many", "medium", "few", *TAIL_METRICS}
    assert set(summary["final"]["ensemble"]) >= set(TAIL_METRICS)  # the training evaluation
    # Same numbers as the training run's own final evaluation on 8 devices.
    final = summary["final"]
    np.testing.assert_allclose(report["ensemble"]["top1"], final["ensemble"]["top1"])
    np.testing.assert_allclose(
        [e["top1"] for e in report["experts"]], [e["top1"] for e in final["experts"]]
    )
    best = RunCheckpoints(workdir, read_only=True)
    assert best.steps("best_ensemble") and best.steps("best_single")

    # Test distributions: a bad name is one line before compute, nothing written.
    os.remove(workdir / "eval_12.json")
    cmd = [sys.executable, "-m", "ncl_jax.evaluate", f"--workdir={workdir}"]
    bad = _run([*cmd, "--test_distributions=forward2,sideways"], env1)
    assert bad.returncode == 2 and not (workdir / "eval_12.json").exists()
    (line,) = bad.stderr.strip().splitlines()[-1:]
    assert line.startswith("error: --test_distributions: 'sideways'"), bad.stderr[-2000:]
    # One pass: the main body is unchanged, and each distribution has its exact class counts.
    names = ["forward2", "uniform", "backward2"]
    good = _run([*cmd, f"--test_distributions={','.join(names)}", "--distribution_seed=3"], env1)
    assert good.returncode == 0, good.stderr[-3000:]
    assert "backward2" in good.stdout
    report = json.loads((workdir / "eval_12.json").read_text())
    np.testing.assert_allclose(report["ensemble"]["top1"], final["ensemble"]["top1"])
    section = report["test_distributions"]
    assert section["seed"] == 3 and section["names"] == names
    assert section["fit_prior"].startswith("uniform")  # the smoke run trains NCL (balanced)
    forward = np.array(section["distributions"]["forward2"]["class_counts"])
    backward = np.array(section["distributions"]["backward2"]["class_counts"])
    n_min = min(section["distributions"]["uniform"]["class_counts"])
    want = np.floor(n_min * 2.0 ** (-np.arange(10) / 9)).astype(int)
    np.testing.assert_array_equal(forward, want)
    np.testing.assert_array_equal(backward, want[::-1])
    for body in section["distributions"].values():
        assert body["num_examples"] == sum(body["class_counts"])
        assert set(body["prior_adjusted"]) >= {"experts", "ensemble", "best_single"}


def test_config_json_records_the_pipeline_auto_chose(uninterrupted):
    workdir, _ = uninterrupted
    assert read_run_config(str(workdir)).dataset.pipeline == "tfdata"  # auto, on this CPU


def test_result_json_records_the_model_cost_of_the_run(uninterrupted):
    workdir, summary = uninterrupted
    with open(workdir / "result.json") as f:
        recorded = json.load(f)["model_cost"]
    assert recorded == summary["model_cost"]
    # The smoke config's three experts with MoCo, costed again here from its config.json with
    # uniform class counts: the run's own counts change the step's count by a few flops per
    # step (measured: 28 per image of 19.8 M), nothing else.
    again = model_cost(read_run_config(str(workdir)))
    assert recorded == pytest.approx(again, rel=1e-5)
    assert {k: v for k, v in recorded.items() if k != "flops_train_step"} == {
        k: v for k, v in again.items() if k != "flops_train_step"
    }
    assert recorded["params_key_encoders"] == recorded["params_ensemble"] > 0


def test_analyze_cli_matches_the_training_evaluation_and_writes_every_figure(
    env, uninterrupted, tmp_path
):
    workdir, summary = uninterrupted
    out = tmp_path / "analysis"
    cmd = [sys.executable, "-m", "ncl_jax.analyze", f"--workdir={workdir}"]
    result = _run(
        [*cmd, f"--compare={workdir}", f"--out={out}", "--tau=1", "--test_distributions=forward2"],
        env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ETA" in result.stdout and "wrote analysis.json" in result.stdout
    body = json.loads((out / "analysis.json").read_text())
    assert body["schema_version"] == 2 and len(body["runs"]) == 2
    # The same network on the same images: a run compared with itself scores the same.
    tds = [r["test_distributions"]["distributions"]["forward2"] for r in body["runs"]]
    assert tds[0]["ensemble"] == tds[1]["ensemble"] and tds[0]["num_examples"] > 0
    run = body["runs"][0]
    assert run["checkpoint"]["step"] == 12 and run["num_experts"] == 3
    best = _run([*cmd, "--checkpoint=best_single", f"--out={tmp_path / 'best'}"], env)
    assert best.returncode == 0, best.stderr[-3000:]
    best_run = json.loads((tmp_path / "best" / "analysis.json").read_text())["runs"][0]
    assert best_run["checkpoint"]["kind"] == "best_single"
    assert "best single-expert top-1 on the 'test' split" in best_run["checkpoint"]["selection"]
    final = summary["final"]
    groups = run["groups"]["official"]  # the smoke config's group_rule
    np.testing.assert_allclose(groups["ensemble"]["top1"], final["ensemble"]["top1"])
    for k, expert in enumerate(final["experts"]):
        np.testing.assert_allclose(groups[f"expert_{k}"]["top1"], expert["top1"])
    assert sum(run["per_class"]["test_count"]) == 256
    assert run["class_names"][:2] == ["airplane", "automobile"]  # the dataset's names
    assert set(run["logit_adjusted"]) == {"0", "1"}
    # A run compared with itself: same recipe, zero KL between them.
    (pair,) = body["kl_between_runs"]
    assert pair["same_recipe"] and max(v or 0 for v in pair["per_class"]) < 1e-6
    figures = {p.name for p in out.iterdir()}
    assert {*plots.FIGURES, "confusion_uninterrupted0.png"} <= figures
    # Nothing is written over: a second analysis into the same --out is refused.
    again = _run([*cmd, f"--out={out}"], env)
    assert again.returncode == 2 and again.stderr.strip().splitlines()[-1].startswith("error:")
    # Training wrote the per-class plot as a TensorBoard image at every evaluation.
    import tensorflow as tf

    tags = {
        value.tag
        for events in workdir.glob("events.out.tfevents.*")
        for event in tf.compat.v1.train.summary_iterator(str(events))
        for value in event.summary.value
    }
    assert "eval/per_class_top1" in tags and "eval/ensemble/top1" in tags


# Two steps: float32 reduction order differs between 2x2 (gloo) and 1x4 devices, and these
# tiny networks amplify it (measured: 5e-7 after 2 steps, 7e-4 after 6); a wrong batch split
# or a missing collective shows up at 1e-1.
SHORT = ("--config.num_epochs=1", "--config.steps_per_epoch=2", "--config.optim.milestones=(1,)")


def test_two_processes_match_one_process(env, tmp_path):
    """launch/local_cpu_multiprocess.sh: 2 processes x 2 CPU devices vs 1 x 4 devices."""
    two_dir, one_dir = tmp_path / "two", tmp_path / "one"
    env2 = dict(
        env,
        NUM_PROCESSES="2",
        DEVICES_PER_PROCESS="2",
        PYTHON=sys.executable,
        PORT=str(23000 + os.getpid() % 2000),
    )
    two = start_program(
        ["bash", "launch/local_cpu_multiprocess.sh", "configs/smoke.py", str(two_dir), *SHORT],
        env=env2,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    single = _run(
        _main_cmd(one_dir, *SHORT), dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    )
    two_out, two_err = two.communicate(timeout=PROGRAM_TIMEOUT_S)
    assert two.returncode == 0, two_err[-3000:]
    assert single.returncode == 0, single.stderr[-3000:]
    step_two, state_two = _final_state(two_dir)
    step_one, state_one = _final_state(one_dir)
    assert step_two == step_one == 2
    _assert_same_tree(state_two, state_one, exact=False)
    two_summary = json.loads(two_out.strip().splitlines()[-1])
    one_summary = json.loads(single.stdout.strip().splitlines()[-1])
    assert two_summary["final"]["num_examples"] == one_summary["final"]["num_examples"] == 256
    np.testing.assert_allclose(
        two_summary["final"]["ensemble"]["top1"], one_summary["final"]["ensemble"]["top1"]
    )


# ----------------------------------------------------------------------------- bad input


def _assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in last, last


def _snapshot(workdir):
    return sorted(
        (str(p.relative_to(workdir)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in pathlib.Path(workdir).rglob("*")
        if p.is_file()
    )


def test_workdir_of_a_different_config_is_refused_untouched(env, uninterrupted):
    workdir, _ = uninterrupted
    before = _snapshot(workdir)
    result = _run(_main_cmd(workdir, *LONGER, "--config.loss.distill_weight=0.5"), env)
    _assert_one_line_error(result, "different config", "loss.distill_weight")
    assert _snapshot(workdir) == before


def test_a_finished_run_extended_with_a_runtime_change_matches_the_longer_run(
    env, uninterrupted, tmp_path
):
    """Reported: --config.num_epochs on a finished run and --config.cpu_devices on a resumed
    one were refused. A 2-epoch run extended to 4 epochs (warmup_multistep: the rates of the
    epochs trained do not depend on num_epochs) ends with the 4-epoch run's parameters."""
    reference_dir, _ = uninterrupted
    workdir = tmp_path / "extended"
    short = _run(_main_cmd(workdir, "--config.num_epochs=2", "--config.optim.milestones=(3,)"), env)
    assert short.returncode == 0, short.stderr[-3000:]
    assert json.loads((workdir / "result.json").read_text())["step"] == 6

    longer = _main_cmd(workdir, *LONGER, "--config.cpu_devices=1")
    refused = _run(longer, env)
    _assert_one_line_error(refused, "num_epochs: 2 -> 4", "--extend_to_epochs=N")

    extended = _run(
        [*_main_cmd(workdir, *LONGER[1:]), "--config.cpu_devices=1", "--extend_to_epochs=4"], env
    )
    assert extended.returncode == 0, extended.stderr[-3000:]
    assert "runtime-only changes" in extended.stderr and "cpu_devices: -1 -> 1" in extended.stderr
    assert json.loads((workdir / "set_aside" / "result.json").read_text())["step"] == 6
    assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 4
    (step_a, state_a), (step_b, state_b) = _final_state(reference_dir), _final_state(workdir)
    assert step_a == step_b == 12
    _assert_same_tree(state_a, state_b, exact=True)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("--config.optim.lrr=0.1", "optim.lrr is not a config field; did you mean optim.lear"),
        ("--config.batch_size=0", "batch_size=0 is out of range; it must be >= 1"),
        ("--config.dataset.train_view=nosuch", "dataset.train_view='nosuch' is unknown"),
    ],
)
def test_reported_config_mistakes_are_one_line_before_the_workdir(
    env, tmp_path, override, fragment
):
    result = _run(_main_cmd(tmp_path / "w", override), env)
    _assert_one_line_error(result, fragment)
    assert not (tmp_path / "w").exists()


def test_corrupt_checkpoint_is_refused_by_evaluate_and_skipped_by_training(
    env, uninterrupted, tmp_path
):
    source, _ = uninterrupted
    workdir = tmp_path / "corrupt"
    shutil.copytree(source, workdir)
    damaged = [
        p
        for p in (workdir / "checkpoints" / "12").rglob("*")
        if p.is_file() and "ocdbt" not in p.name and p.stat().st_size > 1000
    ]
    for path in damaged:
        path.write_bytes(b"\0" * 64)
    before = _snapshot(workdir)
    evaluate = _run([sys.executable, "-m", "ncl_jax.evaluate", f"--workdir={workdir}"], env)
    _assert_one_line_error(evaluate, "checkpoints/12", "cannot be read", "--step=N")
    assert _snapshot(workdir) == before
    # Training falls back to step 9, keeps the damaged checkpoint (moved, byte for byte) and
    # ends with exactly the parameters of the undamaged run.
    train = _run(_main_cmd(workdir, *LONGER), env)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "Skipping checkpoint 12" in train.stderr
    kept = [
        (p.replace("checkpoints/12", "set_aside/checkpoints/12", 1), size, mtime)
        for p, size, mtime in before
        if p.startswith("checkpoints/12/")
    ]
    assert [e for e in _snapshot(workdir) if e[0].startswith("set_aside/checkpoints/")] == kept
    _assert_same_tree(_final_state(source)[1], _final_state(workdir)[1], exact=True)


def test_training_resolves_the_config_exactly_once(uninterrupted):
    """The config is resolved in one place (config.variants.resolve_config), once per program:
    here training; evaluation in test_evaluate_cli_writes_the_json_contract."""
    workdir, _ = uninterrupted
    assert "resolve_config calls: 1" in (workdir / "stderr.txt").read_text()
