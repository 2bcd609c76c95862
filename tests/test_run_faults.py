"""Faults a long run meets (issue 20): Ctrl-C, a failing evaluation, two runs on one workdir,
a failed save, a checkpoint whose bytes rot. Fast tests drive the pieces directly; the slow
ones train the smoke config in this process on the 8 test devices."""

import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ncl_jax.errors import CheckpointError
from ncl_jax.training import loop, workdir_lock
from ncl_jax.training.checkpointing import RunCheckpoints
from tests.tiny import smoke_config

TFDS_DIR = os.environ.get("TFDS_DATA_DIR", "")
needs_cifar = pytest.mark.skipif(
    not os.path.isdir(os.path.join(TFDS_DIR, "cifar10_jpeg")),
    reason=f"offline cifar10_jpeg not found under TFDS_DATA_DIR={TFDS_DIR!r}",
)


def _smoke():
    """3 epochs of 3 steps; the training metrics are read once per epoch."""
    return smoke_config(**{"num_epochs": 3, "optim.milestones": (2,), "log_every_steps": 100})


def _state(workdir, step, kind="checkpoints"):
    """The state saved at `step`, read without any of RunCheckpoints' checks."""
    manager = ocp.CheckpointManager(
        pathlib.Path(workdir, kind).absolute(),
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_names=("state", "meta"),
    )
    restored = manager.restore(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()),
    )
    manager.close()
    return restored["state"], dict(restored["meta"])


def _assert_same(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _count_steps(monkeypatch, before_step=None, action=None):
    """Counts train-step calls; runs `action` just before the call numbered `before_step`."""
    real, calls = loop.pmap_train_step, {"n": 0}

    def counting(cfg):
        step_fn = real(cfg)

        def step(state, batch):
            if calls["n"] == before_step:
                action()
            calls["n"] += 1
            return step_fn(state, batch)

        return step

    monkeypatch.setattr(loop, "pmap_train_step", counting)
    return calls


# ------------------------------------------------------------------ Ctrl-C
def test_first_sigint_asks_for_a_stop_and_the_second_exits_at_once(monkeypatch, capsys):
    exits, aborted = [], []

    def fake_exit(status):
        exits.append(status)

    monkeypatch.setattr(loop.os, "_exit", fake_exit)
    before = signal.getsignal(signal.SIGINT)
    with loop._StopSignals(catch_sigint=True, on_abort=lambda: aborted.append(1)) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "SIGINT" and exits == []
        assert "Ctrl-C again to exit at once" in capsys.readouterr().err
        os.kill(os.getpid(), signal.SIGINT)
        assert exits == [130] and aborted == [1]
        assert "exited at once without saving" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before


def test_sigint_is_left_alone_where_hosts_must_agree_on_the_stop():
    before = signal.getsignal(signal.SIGINT)
    with loop._StopSignals(catch_sigint=False) as stop:
        assert signal.getsignal(signal.SIGINT) is before
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.received == "SIGTERM"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 3-epoch smoke run: (workdir, result)."""
    workdir = tmp_path_factory.mktemp("reference")
    return workdir, loop.train_and_evaluate(_smoke(), str(workdir))


@pytest.mark.slow
@needs_cifar
def test_ctrl_c_saves_at_the_next_step_and_the_rerun_ends_identical(
    reference, tmp_path, monkeypatch
):
    calls = _count_steps(monkeypatch, 4, lambda: os.kill(os.getpid(), signal.SIGINT))
    stopped = loop.train_and_evaluate(_smoke(), str(tmp_path))
    assert stopped["preempted"] and stopped["stopped_by"] == "SIGINT"
    assert stopped["step"] == 5 and calls["n"] == 5
    assert RunCheckpoints(tmp_path, read_only=True).steps() == [3, 5]
    assert _state(tmp_path, 5)[1]["epoch"] == 1
    resumed = loop.train_and_evaluate(_smoke(), str(tmp_path))
    assert calls["n"] == 9 and resumed["step"] == 9
    _assert_same(_state(reference[0], 9)[0], _state(tmp_path, 9)[0])
    assert resumed["final"] == reference[1]["final"]


# ------------------------------------------------------------------ a failing evaluation
@pytest.mark.slow
@needs_cifar
def test_a_failing_evaluation_loses_no_training(reference, tmp_path, monkeypatch):
    real = loop.evaluation_counts

    def broken(*args, **kwargs):
        raise ValueError("EnsureShape: [3000,4000,3] vs [32,32,3]")

    monkeypatch.setattr(loop, "evaluation_counts", broken)
    calls = _count_steps(monkeypatch)
    with pytest.raises(ValueError, match="EnsureShape"):
        loop.train_and_evaluate(_smoke(), str(tmp_path))
    assert calls["n"] == 3
    assert _state(tmp_path, 3)[1]["eval_pending"]  # committed before the evaluation began

    monkeypatch.setattr(loop, "evaluation_counts", real)
    resumed = loop.train_and_evaluate(_smoke(), str(tmp_path))
    assert calls["n"] == 9  # the epoch was not trained again
    _assert_same(_state(reference[0], 9)[0], _state(tmp_path, 9)[0])
    # The pending evaluation ran on resume: the same best epochs and final evaluation.
    assert resumed["best_evals"] == reference[1]["best_evals"]
    assert resumed["final"] == reference[1]["final"]


# ------------------------------------------------------------------ one writer per workdir
def _write_lock(workdir, **holder):
    record = {**workdir_lock.this_process(), **holder}
    (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(record))
    return record


@pytest.fixture
def live_pid():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@needs_cifar
def test_a_second_run_on_a_held_workdir_is_refused_naming_the_holder(tmp_path, live_pid):
    _write_lock(tmp_path, pid=live_pid, process_start=None, started="2026-12-02T10:00:00+00:00")
    with pytest.raises(CheckpointError) as err:
        loop.train_and_evaluate(_smoke(), str(tmp_path))
    message = str(err.value)
    host = socket.gethostname()
    assert f"is in use by another training run (host {host}, pid {live_pid}, " in message
    assert "started 2026-12-02T10:00:00+00:00" in message and f"kill -TERM {live_pid}" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == [workdir_lock.LOCK_FILE]  # untouched


def test_the_lock_of_an_ended_run_is_taken_over_with_a_warning(tmp_path, dead_pid, caplog):
    _write_lock(tmp_path, pid=dead_pid)
    lock = workdir_lock.WorkdirLock(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        lock.acquire()
    assert "Taking over the lock" in caplog.text and "that process has ended" in caplog.text
    assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()


def test_a_reused_pid_does_not_keep_a_lock(tmp_path, live_pid):
    """The pid runs, but not the process that wrote the lock (it started at another time)."""
    _write_lock(tmp_path, pid=live_pid, process_start="1")
    with workdir_lock.WorkdirLock(str(tmp_path)):
        assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_lock_from_another_host_is_refused_unless_taken_over(tmp_path):
    _write_lock(tmp_path, host="node-17", pid=4242)
    with pytest.raises(
        CheckpointError,
        match="on another host \\(host node-17, pid 4242, .*"
        "last active .*rerun with --take_over_lock",
    ):
        workdir_lock.WorkdirLock(str(tmp_path)).acquire()
    with workdir_lock.WorkdirLock(str(tmp_path), take_over=True):
        assert json.loads((tmp_path / workdir_lock.LOCK_FILE).read_text())["pid"] == os.getpid()


def test_of_two_runs_started_together_one_gets_the_lock(tmp_path):
    first, second = workdir_lock.WorkdirLock(str(tmp_path)), workdir_lock.WorkdirLock(str(tmp_path))
    first.acquire()
    with pytest.raises(CheckpointError, match=f"pid {os.getpid()}"):
        second.acquire()  # this process is alive: refused
    second.release()  # a refused lock releases nothing
    assert (tmp_path / workdir_lock.LOCK_FILE).exists()
    first.release()
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()
