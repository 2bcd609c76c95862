"""Faults a long run meets (issue 20): Ctrl-C, a failing evaluation, two runs on one workdir,
a failed save, a checkpoint whose bytes rot. Fast tests drive the pieces directly; the slow
ones train the smoke config in this process on the 8 test devices."""

import errno
import hashlib
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import types

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ncl_jax import cli
from ncl_jax.errors import CheckpointError
from ncl_jax.training import loop, state_checks, stop_signals, storage_faults, workdir_lock
from ncl_jax.training.checkpointing import CheckpointRemoved, RunCheckpoints
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

    monkeypatch.setattr(stop_signals.os, "_exit", fake_exit)
    before = signal.getsignal(signal.SIGINT)
    with stop_signals.StopSignals(catch_sigint=True, on_abort=lambda: aborted.append(1)) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == "SIGINT" and exits == []
        assert "Ctrl-C again to exit at once" in capsys.readouterr().err
        os.kill(os.getpid(), signal.SIGINT)
        assert exits == [130] and aborted == [1]
        assert "exited at once without saving" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before


def test_sigint_is_left_alone_where_hosts_must_agree_on_the_stop():
    before = signal.getsignal(signal.SIGINT)
    with stop_signals.StopSignals(catch_sigint=False) as stop:
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


@pytest.mark.slow  # fast tier under 2 min: heavy compile or a real dataset
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


# ------------------------------------------------------------------ reading beside a live run
def _tiny(step):
    return {"w": np.full((4,), step, np.float32), "step": np.int32(step)}


def _save_tiny(checkpoints, *steps):
    for step in steps:
        checkpoints.save("checkpoints", step, _tiny(step), {"epoch": step, "step": step})
    checkpoints.wait()


def test_a_checkpoint_rotated_away_while_read_is_said_so_and_the_newest_read(
    tmp_path, monkeypatch, caplog
):
    trainer = RunCheckpoints(str(tmp_path), keep=2)
    _save_tiny(trainer, 1, 2)
    reader = RunCheckpoints(str(tmp_path), read_only=True)
    manager = reader._managers["checkpoints"]
    real_restore, calls = manager.restore, []

    def trainer_moves_on(step, *args, **kwargs):
        if not calls:  # the trainer saves 3 and 4 and rotates 1 and 2 away right now
            _save_tiny(trainer, 3, 4)
        calls.append(step)
        return real_restore(step, *args, **kwargs)

    monkeypatch.setattr(manager, "restore", trainer_moves_on)
    with caplog.at_level(logging.WARNING):
        kind, step, state, meta = reader.restore_selected(None, _tiny(0))
    assert calls == [2, 4] and (kind, step, meta["step"]) == ("checkpoints", 4, 4)
    np.testing.assert_array_equal(state["w"], np.full((4,), 4, np.float32))
    assert "checkpoints/2 was removed while it was being read" in caplog.text
    assert "cannot be read" not in caplog.text

    _save_tiny(trainer, 5)  # rotates 3 away
    with pytest.raises(
        CheckpointRemoved, match="checkpoints/3 was removed .* steps now: \\[4, 5\\]"
    ):
        reader.restore_selected(3, _tiny(0))  # an explicit step is not replaced
    reader.close()
    trainer.close()


def test_a_checkpoint_still_being_written_is_not_listed(tmp_path):
    trainer = RunCheckpoints(str(tmp_path))
    _save_tiny(trainer, 1)
    (tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1764670000").mkdir()  # save under way
    reader = RunCheckpoints(str(tmp_path), read_only=True)
    assert reader.select(None) == ("checkpoints", 1)
    reader.close()
    trainer.close()


# ------------------------------------------------------------------ a failed save
MIB = np.zeros((2**18,), np.float32)  # 1 MiB


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_line_naming_the_path_the_space_and_the_last_good_checkpoint(
    tmp_path, monkeypatch, capsys
):
    checkpoints = RunCheckpoints(str(tmp_path))
    checkpoints.save("checkpoints", 1, {"w": MIB}, {"step": 1})
    checkpoints.wait()
    monkeypatch.setattr(ocp.CheckpointManager, "save", _no_space)
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(lambda: checkpoints.save("checkpoints", 2, {"w": MIB + 2}, {"step": 2}))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(
        f"error: saving checkpoint {tmp_path}/checkpoints/2 failed: No space left on device "
        "(errno 28); it needs about 1.0 MiB, "
    )
    assert f" MiB are free there; the last good checkpoint is {tmp_path}/checkpoints/1:" in err
    assert f"Details: {tmp_path}/{storage_faults.TRACEBACK_FILE}" in err
    assert "OSError: [Errno 28]" in (tmp_path / storage_faults.TRACEBACK_FILE).read_text()
    monkeypatch.undo()
    state, meta = checkpoints.restore("checkpoints", 1, {"w": MIB})  # intact
    assert meta["step"] == 1 and checkpoints.steps() == [1]
    checkpoints.close()


def test_a_failure_of_the_background_write_is_reported_by_the_next_wait(tmp_path, monkeypatch):
    """TensorStore's form, from Orbax's save thread: a ValueError carrying the errno."""
    checkpoints = RunCheckpoints(str(tmp_path))
    checkpoints.save("checkpoints", 1, {"w": MIB}, {"step": 1})
    message = (
        'RESOURCE_EXHAUSTED: Error writing "w/0" in OCDBT database: Failed to write 596282 '
        "bytes to file 11: Disk quota exceeded [os_error_code='122']"
    )

    def quota(self):
        raise ValueError(message)

    monkeypatch.setattr(ocp.CheckpointManager, "wait_until_finished", quota)
    quota_exceeded = "checkpoints/1 failed: Disk quota exceeded"
    with pytest.raises(storage_faults.SaveFailed, match=quota_exceeded):
        checkpoints.wait()
    monkeypatch.undo()
    checkpoints.close()


def test_a_failed_save_that_is_not_about_storage_keeps_its_traceback(tmp_path, monkeypatch):
    checkpoints = RunCheckpoints(str(tmp_path))

    def bug(*args, **kwargs):
        raise TypeError("a bug")

    monkeypatch.setattr(ocp.CheckpointManager, "save", bug)
    with pytest.raises(TypeError, match="a bug"):
        checkpoints.save("checkpoints", 1, {"w": MIB}, {"step": 1})
    assert not (tmp_path / storage_faults.TRACEBACK_FILE).exists()
    monkeypatch.undo()
    checkpoints.close()


def test_orbax_error_logs_of_a_reported_storage_failure_are_dropped():
    quiet = storage_faults.StorageErrorsReported()

    def record(message, pathname="/site-packages/orbax/checkpoint/_src/x.py"):
        return logging.LogRecord("absl", logging.ERROR, pathname, 1, message, None, None)

    assert not quiet.filter(record("... No space left on device [os_error_code='28']"))
    assert quiet.filter(record("RESOURCE_EXHAUSTED: something else"))
    assert quiet.filter(record("[os_error_code='28']", pathname="/ncl_jax/training/loop.py"))


@pytest.mark.slow
@needs_cifar
def test_a_save_failing_mid_run_leaves_a_workdir_that_resumes_exactly(
    reference, tmp_path, monkeypatch, capsys
):
    real_save = ocp.CheckpointManager.save

    def full_at_step_6(self, step, *args, **kwargs):
        if step == 6:
            _no_space()
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_at_step_6)
    with pytest.raises(SystemExit):
        cli.run_cli(lambda: loop.train_and_evaluate(_smoke(), str(tmp_path)))
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: saving checkpoint {tmp_path}/checkpoints/6 failed"), line
    assert f"the last good checkpoint is {tmp_path}/checkpoints/3:" in line
    assert not (tmp_path / workdir_lock.LOCK_FILE).exists()  # released
    monkeypatch.undo()
    resumed = loop.train_and_evaluate(_smoke(), str(tmp_path))
    _assert_same(_state(reference[0], 9)[0], _state(tmp_path, 9)[0])
    assert resumed["final"] == reference[1]["final"]


# ------------------------------------------------------------------ checkpoints verified on restore
def _raw_restore(workdir, step):
    manager = ocp.CheckpointManager(
        pathlib.Path(workdir, "checkpoints").absolute(),
        options=ocp.CheckpointManagerOptions(read_only=True),
        item_names=("state", "meta"),
    )
    try:
        return manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))[
            "state"
        ]
    finally:
        manager.close()


def _rot_into_finite_values(workdir, step, saved):
    """Flips one bit of the array data of checkpoints/<step> where that changes some values
    into other finite ones (found by reading back without checks), as bytes rotting on disk."""
    files = [p for p in pathlib.Path(workdir, "checkpoints", str(step)).rglob("*") if p.is_file()]
    data_file = max(files, key=lambda p: p.stat().st_size)
    pristine = data_file.read_bytes()
    for offset in range(100, len(pristine), 997):
        rotten = bytearray(pristine)
        rotten[offset] ^= 0x01
        data_file.write_bytes(bytes(rotten))
        try:
            read = np.asarray(_raw_restore(workdir, step)["w"])
        except Exception:  # this flip made it unreadable; try another
            continue
        if np.isfinite(read).all() and not np.array_equal(read, saved):
            return
    pytest.fail("no bit flip gave finite garbage")


def test_a_checkpoint_whose_bytes_rot_into_finite_values_is_refused_naming_it(tmp_path):
    weights = np.random.default_rng(0).normal(size=(10000,)).astype(np.float32)
    checkpoints = RunCheckpoints(str(tmp_path))
    _save_tiny(checkpoints, 1)
    checkpoints.save("checkpoints", 2, {"w": weights, "step": np.int32(2)}, {"step": 2})
    checkpoints.wait()
    _rot_into_finite_values(tmp_path, 2, weights)
    target = {"w": weights, "step": np.int32(0)}
    with pytest.raises(CheckpointError) as err:
        checkpoints.restore("checkpoints", 2, target)
    assert str(err.value).startswith(
        f"checkpoint {tmp_path}/checkpoints/2 is damaged: 1 of its arrays do not match the "
        "SHA-256 digest written when it was saved (e.g. ['w']); it was left untouched; other "
        "steps: [1]"
    ), str(err.value)
    state, meta = checkpoints.restore("checkpoints", 1, _tiny(0))  # intact ones still read
    assert meta == {"epoch": 1, "step": 1}  # the digest is not part of what training sees
    checkpoints.close()


def test_the_digest_covers_every_array_by_its_path():
    state = {"a": np.arange(3, dtype=np.float32), "b": {"c": np.int32(7)}}
    digest = state_checks.state_digest(state)
    assert digest == {
        "['a']": hashlib.sha256(np.arange(3, dtype=np.float32).tobytes()).hexdigest(),
        "['b']['c']": hashlib.sha256(np.int32(7).tobytes()).hexdigest(),
    }
    changed = {"a": np.array([0, 1, 2.0000002], np.float32), "b": {"c": np.int32(7)}}
    assert state_checks.state_digest(changed)["['a']"] != digest["['a']"]


def test_a_truncated_checkpoint_is_skipped_without_event_loop_tracebacks(tmp_path, monkeypatch):
    """Orbax gives up a restore at its first failed read; TensorStore then delivers the other
    reads to the closed event loop, which Python printed as dozens of tracebacks (through
    sys.unraisablehook, recorded here)."""
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    rng = np.random.default_rng(0)
    tree = {f"a{i:03d}": rng.normal(size=(4000,)).astype(np.float32) for i in range(100)}
    checkpoints = RunCheckpoints(str(tmp_path))
    for step in (1, 2):
        checkpoints.save("checkpoints", step, tree, {"step": step})
    checkpoints.wait()
    files = [p for p in (tmp_path / "checkpoints" / "2").rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    biggest.write_bytes(biggest.read_bytes()[: biggest.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="checkpoints/2 cannot be read"):
        checkpoints.restore("checkpoints", 2, tree)
    assert checkpoints.restore("checkpoints", 1, tree)[1]["step"] == 1
    checkpoints.close()
    assert [str(u.exc_value) for u in reported] == []


def test_only_the_late_reads_of_a_failed_restore_are_silenced(monkeypatch):
    import asyncio

    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    loop_ = asyncio.new_event_loop()
    loop_.close()
    try:
        loop_.call_soon_threadsafe(print)
    except RuntimeError as err:
        late = err
    other = RuntimeError("Event loop is closed")  # raised elsewhere: still reported
    storage_faults.drop_late_reads_of_failed_restores()
    for exc in (late, other):
        sys.unraisablehook(
            types.SimpleNamespace(
                exc_type=RuntimeError,
                exc_value=exc,
                exc_traceback=exc.__traceback__,
                err_msg=None,
                object=None,
            )
        )
    assert [u.exc_value for u in reported] == [other]
