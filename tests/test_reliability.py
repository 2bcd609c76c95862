"""Never keep a broken state: non-finite guards, fallback on unreadable checkpoints, evaluation
on any device count. In-process runs of the smoke config on the 8 test devices."""

import json
import logging
import os
import pathlib
import shutil
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ncl_jax import cli
from ncl_jax.core.metrics import tree_is_finite
from ncl_jax.errors import CheckpointError, TrainingDiverged
from ncl_jax.training import loop
from ncl_jax.training.checkpointing import KINDS, RunCheckpoints
from tests.programs import run_program
from tests.tiny import smoke_config

REPO = pathlib.Path(__file__).resolve().parents[1]
TFDS_DIR = os.environ.get("TFDS_DATA_DIR", "")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.path.isdir(os.path.join(TFDS_DIR, "cifar10_jpeg")),
        reason=f"offline cifar10_jpeg not found under TFDS_DATA_DIR={TFDS_DIR!r}",
    ),
]


def _smoke(**overrides):
    return smoke_config(**{"log_every_steps": 100, **overrides})  # guard read per epoch


def _saved_states(workdir):
    """{(kind, step): state} of every checkpoint on disk, read without any guard."""
    out = {}
    for kind in KINDS:
        path = pathlib.Path(workdir, kind)
        if not path.is_dir():
            continue
        manager = ocp.CheckpointManager(
            path.absolute(),
            options=ocp.CheckpointManagerOptions(read_only=True),
            item_names=("state", "meta"),
        )
        for step in manager.all_steps():
            restored = manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
            )
            out[(kind, step)] = restored["state"]
        manager.close()
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An uninterrupted 3-epoch smoke run; eval_batch_size 100 does not split over 8 devices
    (evaluation rounds it up and masks the padding)."""
    workdir = tmp_path_factory.mktemp("trained")
    config = _smoke(**{"num_epochs": 3, "eval_batch_size": 100, "optim.milestones": (2,)})
    result = loop.train_and_evaluate(config, str(workdir))
    return workdir, config, result


# ------------------------------------------------------------------ 1: non-finite states
@pytest.mark.parametrize("decay_factor", [1e40, 1e38])
def test_a_blown_up_update_is_never_saved_and_the_message_names_a_finite_checkpoint(
    tmp_path, decay_factor
):
    """The reported input: from epoch 2 the rate is 0.1 * decay_factor; the loss of the step
    that breaks the parameters is still finite."""
    config = _smoke(
        **{
            "steps_per_epoch": 1,
            "num_epochs": 3,
            "optim.milestones": (2,),
            "optim.decay_factor": decay_factor,
        }
    )
    with pytest.raises(TrainingDiverged) as err:
        loop.train_and_evaluate(config, str(tmp_path))
    saved = _saved_states(tmp_path)
    assert saved and all(tree_is_finite(state) for state in saved.values()), sorted(saved)
    newest = RunCheckpoints(tmp_path, read_only=True).latest_step()
    assert f"newest good checkpoint is step {newest} " in str(err.value), str(err.value)
    # Rerunning the same command resumes from that finite checkpoint (and diverges again).
    with pytest.raises(TrainingDiverged):
        loop.train_and_evaluate(config, str(tmp_path))


def test_non_finite_loss_ends_the_program_naming_the_step_and_keeps_the_good_checkpoint(
    tmp_path, capsys
):
    """As the program runs it (cli.run_cli): exit status 1 and one last line. Epoch 1 trains
    normally (checkpoint at step 3); from epoch 2 the rate is 1e31, so the loss of step 3
    itself is non-finite. Per-step guard reads: the smoke config logs every step."""
    config = smoke_config(**{"optim.milestones": (2,), "optim.decay_factor": 1e32})
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(lambda: loop.train_and_evaluate(config, str(tmp_path)))
    assert exit_info.value.code == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: step 3 (epoch 2) produced a non-finite"), last
    assert "newest good checkpoint is step 3" in last, last
    assert RunCheckpoints(tmp_path, read_only=True).steps() == [3]


def _corrupt_at(monkeypatch, at_step, corrupt):
    """Runs `corrupt` on the replicated state just before the step numbered `at_step`."""
    real = loop.pmap_train_step

    def pmap_with_fault(cfg):
        step_fn, calls = real(cfg), {"n": 0}

        def faulty(state, batch):
            if calls["n"] == at_step:
                state = corrupt(state)
            calls["n"] += 1
            return step_fn(state, batch)

        return faulty

    monkeypatch.setattr(loop, "pmap_train_step", pmap_with_fault)


def _nan_first_param(state):
    leaves, treedef = jax.tree.flatten(state.params)
    leaves[0] = leaves[0] * jnp.nan
    return state.replace(params=jax.tree.unflatten(treedef, leaves))


@pytest.mark.parametrize(
    "corrupt",
    [_nan_first_param, lambda s: s.replace(queue=s.queue.at[..., 0, 0].set(jnp.inf))],
    ids=["nan_parameter", "inf_in_queue"],
)
def test_fault_injected_between_steps_stops_with_the_newest_finite_checkpoint_intact(
    tmp_path, monkeypatch, corrupt
):
    _corrupt_at(monkeypatch, 4, corrupt)  # epoch 2 of 3 steps; checkpoint 3 exists
    with pytest.raises(TrainingDiverged, match="step 4 .* newest good checkpoint is step 3 "):
        loop.train_and_evaluate(_smoke(), str(tmp_path))
    saved = _saved_states(tmp_path)
    assert ("checkpoints", 3) in saved and ("checkpoints", 6) not in saved
    assert all(tree_is_finite(state) for state in saved.values())


def test_save_refuses_a_non_finite_state_and_writes_nothing(tmp_path):
    checkpoints = RunCheckpoints(str(tmp_path))
    state = {"w": np.array([1.0, np.nan], np.float32), "step": np.int32(3)}
    with pytest.raises(TrainingDiverged, match="non-finite values .* at step 3"):
        checkpoints.save("checkpoints", 3, state, {"epoch": 1})
    checkpoints.wait()
    assert checkpoints.steps() == []
    checkpoints.close()


def _replace_with_nan_copy(workdir, step):
    """Rewrites checkpoints/<step> as a NaN copy of itself, bypassing every guard (as an
    older version, or a bit flip, could have left it)."""
    path = pathlib.Path(workdir, "checkpoints")
    manager = ocp.CheckpointManager(path.absolute(), item_names=("state", "meta"))
    restored = manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
    )
    shutil.rmtree(path / str(step))
    manager.reload()
    bad = jax.tree.map(
        lambda x: x * np.nan if np.issubdtype(np.asarray(x).dtype, np.inexact) else x,
        restored["state"],
    )
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(bad), meta=ocp.args.JsonSave(restored["meta"])
        ),
    )
    manager.wait_until_finished()
    manager.close()


def test_evaluate_refuses_a_non_finite_checkpoint_and_training_skips_it(
    trained, tmp_path, capsys, caplog
):
    from ncl_jax.training.saved_runs import evaluate_saved_run

    source, config, result = trained
    workdir = tmp_path / "nan"
    shutil.copytree(source, workdir)
    _replace_with_nan_copy(workdir, 9)
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(lambda: evaluate_saved_run(str(workdir)))
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "checkpoints/9 holds non-finite values" in line, line
    assert "--step=N" in line
    # The hint works: an older step evaluates.
    assert evaluate_saved_run(str(workdir), step=6)["step"] == 6
    # Training falls back to step 6, names the skipped checkpoint, keeps it, and ends where
    # the uninterrupted run ended.
    with caplog.at_level(logging.WARNING):
        again = loop.train_and_evaluate(config, str(workdir))
    assert "Skipping checkpoint 9" in caplog.text and "set_aside" in caplog.text
    assert (workdir / "set_aside" / "checkpoints" / "9").is_dir()
    assert again["final"]["ensemble"]["top1"] == result["final"]["ensemble"]["top1"]


# ------------------------------------------------------------------ 3: hints that work
def _damage(checkpoint_dir):
    files = [p for p in checkpoint_dir.rglob("*") if p.is_file() and p.stat().st_size > 1000]
    assert files
    files[0].unlink()  # as the issue: one file inside the step directory deleted


def test_unreadable_newest_checkpoint_falls_back_then_resumes_to_the_same_parameters(
    trained, tmp_path, caplog
):
    source, config, _ = trained
    workdir = tmp_path / "damaged"
    shutil.copytree(source, workdir)
    _damage(workdir / "checkpoints" / "9")
    with caplog.at_level(logging.WARNING):
        loop.train_and_evaluate(config, str(workdir))
    assert "Skipping checkpoint 9" in caplog.text
    kept = workdir / "set_aside" / "checkpoints" / "9"
    assert kept.is_dir()  # moved, never deleted
    a, b = _saved_states(source)[("checkpoints", 9)], _saved_states(workdir)[("checkpoints", 9)]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_from_an_explicit_step_moves_newer_checkpoints_aside(trained, tmp_path):
    source, config, result = trained
    workdir = tmp_path / "explicit"
    shutil.copytree(source, workdir)
    again = loop.train_and_evaluate(config, str(workdir), resume_step=6)
    assert (workdir / "set_aside" / "checkpoints" / "9").is_dir()
    assert again["step"] == 9
    assert again["final"]["ensemble"]["top1"] == result["final"]["ensemble"]["top1"]
    with pytest.raises(CheckpointError, match="no checkpoint at step 5"):
        loop.train_and_evaluate(config, str(workdir), resume_step=5)


def test_main_accepts_step_as_its_error_messages_suggest(trained, tmp_path):
    """`python -m ncl_jax.main ... --step=N`, the command the unreadable-checkpoint message
    suggests, exists and resumes."""
    source, _, _ = trained
    workdir = tmp_path / "cli"
    shutil.copytree(source, workdir)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    cmd = [
        sys.executable,
        "-m",
        "ncl_jax.main",
        "--config=configs/smoke.py",
        f"--workdir={workdir}",
        "--config.num_epochs=3",
        "--config.eval_batch_size=100",
        "--config.optim.milestones=(2,)",
        "--config.log_every_steps=100",
        "--step=6",
    ]
    result = run_program(cmd, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["step"] == 9


# ------------------------------------------------------------------ 2: any device count
def test_evaluation_works_on_any_device_count_with_the_same_accuracies(trained):
    workdir, _, result = trained
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=3")
    cmd = [sys.executable, "-m", "ncl_jax.evaluate", f"--workdir={workdir}"]
    out = run_program(cmd, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((workdir / "eval_9.json").read_text())
    assert report["num_examples"] == 256
    # Counts give the same accuracies on any device count; NLL and ECE are float sums whose
    # order follows the device split, so they agree to float32 rounding.
    trained_models = [result["final"]["ensemble"], *result["final"]["experts"]]
    for got, want in zip([report["ensemble"], *report["experts"]], trained_models, strict=True):
        assert got.keys() == want.keys()
        for key in got:
            if key in ("nll", "ece"):
                assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
            else:
                assert got[key] == want[key], key
