"""The training loop: `train_and_evaluate(config, workdir) -> final metrics`.

Resumes automatically from the newest readable, finite checkpoint in the workdir (same epoch,
step, data position and RNG, so a killed run ends with exactly the parameters of an
uninterrupted one), or from an explicit `resume_step`; checkpoints newer than the resume point
are moved aside, never deleted. Evaluates every `eval_every_epochs`, after the epoch's
checkpoint is committed, keeps best-by-ensemble and best-by-single checkpoints (selected on the
evaluation split, as the official code does), stops cleanly on SIGTERM or Ctrl-C with a
checkpoint, and stops as soon as a step's loss or new state holds a NaN/Inf (or a value of 2^64
or more, which only a diverged update produces), without saving that state. Holds
WORKDIR/train.lock while it runs (workdir_lock).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util
from jax.experimental import multihost_utils

from ncl_jax import data
from ncl_jax.config import builders
from ncl_jax.config.model_cost import model_cost
from ncl_jax.config.validation import validate_config
from ncl_jax.config.variants import replaced
from ncl_jax.core.metrics import MetricSums, eval_scalars
from ncl_jax.core.train_step import pmap_eval_counts_step, pmap_train_step, replicate, unreplicate
from ncl_jax.errors import CheckpointError, TrainingDiverged
from ncl_jax.evaluation.evaluate import eval_batches, evaluation_counts
from ncl_jax.evaluation.plots import per_class_image
from ncl_jax.evaluation.tail_metrics import evaluation_body
from ncl_jax.training.checkpointing import RunCheckpoints
from ncl_jax.training.run_files import RESULT_FILE, write_json_atomically
from ncl_jax.training.saved_runs import read_result
from ncl_jax.training.stop_signals import StopSignals
from ncl_jax.training.workdir_lock import WorkdirLock
from ncl_jax.training.writers import create_progress, create_writer


def resolve_steps_per_epoch(config: ml_collections.ConfigDict, info) -> int:
    full = data.steps_per_epoch(info, config.batch_size)
    return min(full, config.steps_per_epoch) if config.steps_per_epoch > 0 else full


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    resume_step: int | None = None,
    extend: bool = False,
    take_over_lock: bool = False,
) -> dict:
    """Trains NCL as configured into `workdir` and returns the final metrics.

    resume_step: continue from that checkpoint step (any kind) instead of the newest one.
    extend: the run in `workdir` may have fewer epochs than config.num_epochs (ncl_jax.main
    --extend_to_epochs; RunCheckpoints.check_or_write_config says what is checked).
    take_over_lock: take WORKDIR/train.lock even from a run this host cannot see
    (workdir_lock); without it a workdir held by another run raises CheckpointError.
    `config` must be resolved (ncl_jax.config.variants.resolve_config, once, by the program);
    config.json records it. Raises ConfigError/DataError/CheckpointError for bad input before
    any compute, and TrainingDiverged when a step produces a non-finite loss or state
    (metrics.all_finite).

    Each epoch's checkpoint is committed to disk before that epoch's evaluation starts (its
    meta says `eval_pending`), so a failing evaluation loses no training: the rerun resumes
    after the epoch and runs the pending evaluation first."""
    validate_config(config, num_devices=jax.device_count(), num_processes=jax.process_count())
    # A --step with nothing to resume fails before the dataset is read (which decodes it).
    if resume_step is not None and not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise CheckpointError(f"--step={resume_step}: {workdir} has no checkpoints to resume.")
    info = data.get_dataset_info(config.dataset)  # a missing dataset fails before any file
    # An impossible pipeline fails before any file too. `auto` is replaced by its choice, so
    # that config.json records it and a resumed run, on any platform, reads through the same
    # pipeline (their augmentations draw differently: config.resume_rules).
    pipeline = data.resolve_pipeline(config.dataset)
    if config.dataset.pipeline != pipeline:
        config = replaced(config, {"dataset.pipeline": pipeline})
    if pipeline == "device":
        logging.warning(
            "Training through the device pipeline, which has trained below the tf.data pipeline "
            "on the short CIFAR-10-LT recipe, cause not yet found (docs/results.md, 'The two "
            "input pipelines'); --config.dataset.pipeline=tfdata gives results comparable "
            "with that table's."
        )
    lock = _lock_workdir(workdir, take_over_lock)
    try:
        checkpoints = RunCheckpoints(workdir, keep=config.keep_checkpoints)
        try:
            result = _train(config, workdir, info, checkpoints, resume_step, lock, extend)
        except BaseException:
            # Saves already started still finish (and become resumable); a failure of theirs
            # is secondary to the one being raised.
            with contextlib.suppress(Exception):
                checkpoints.close()
            raise
        checkpoints.close()
        return result
    finally:
        if lock is not None:
            lock.release()


def _lock_workdir(workdir: str, take_over: bool) -> WorkdirLock | None:
    """Process 0 holds WORKDIR/train.lock for the whole run (None elsewhere); every process
    raises the same CheckpointError when another run holds it."""
    lock, error = None, None
    if jax.process_index() == 0:
        lock = WorkdirLock(workdir, take_over=take_over)
        try:
            lock.acquire()
        except CheckpointError as err:
            error = err
    if jax.process_count() > 1:
        refused = int(multihost_utils.broadcast_one_to_all(np.int32(error is not None)))
        if refused and error is None:
            error = CheckpointError(f"{workdir} is in use by another training run (see process 0).")
    if error is not None:
        raise error
    return lock


def _train(
    config, workdir: str, info, checkpoints: RunCheckpoints, resume_step, lock, extend: bool
) -> dict:
    checkpoints.check_or_write_config(config, extend=extend)
    if jax.process_index() == 0:  # under dataset.on_bad_file=skip: the files left out
        data.write_skipped_files(config.dataset, workdir)
    steps_per_epoch = resolve_steps_per_epoch(config, info)
    total_steps = steps_per_epoch * config.num_epochs
    step_cfg = builders.make_step_config(
        config, class_counts=info.class_counts, steps_per_epoch=steps_per_epoch
    )
    # Abstract shapes only (tracing, no compile): for result.json, which only process 0 writes.
    cost = model_cost(config, step_config=step_cfg) if jax.process_index() == 0 else None

    meta: dict = {}
    restored = _restore_for_resume(
        checkpoints, builders.abstract_state(config, step_cfg), resume_step
    )
    if restored is None:
        state = builders.create_state(config, step_cfg)
    else:
        state, meta = restored
        logging.info(
            "Resuming from %s at step %d (%s epochs completed).",
            workdir,
            int(state.step),
            meta.get("epoch"),
        )
    step = int(state.step)
    replicated = replicate(state)
    del state
    p_train, p_eval = pmap_train_step(step_cfg), pmap_eval_counts_step(step_cfg)
    group_masks = info.group_masks(config.group_rule)

    tensorflow_free = not data.needs_tensorflow(config.dataset)
    writer = create_writer(
        workdir, just_logging=jax.process_index() > 0, tensorflow_free=tensorflow_free
    )
    if step == 0:
        writer.write_hparams(_hparams(config))
    progress = create_progress(
        writer,
        num_train_steps=total_steps,
        every_steps=config.log_every_steps,
        tensorflow_free=tensorflow_free,
    )
    best = dict(meta.get("best", {"ensemble": -1.0, "single": -1.0}))
    last_eval: dict = meta.get("last_eval", {})
    best_evals: dict = meta.get("best_evals", {})  # the whole evaluation at each best epoch
    sums, window_start, window_steps = MetricSums(), time.perf_counter(), 0

    def save(kind: str, epoch: int, *, eval_pending: bool = False) -> None:
        checkpoints.save(
            kind,
            step,
            unreplicate(replicated),
            {
                "epoch": epoch,
                "step": step,
                "best": best,
                "last_eval": last_eval,
                "best_evals": best_evals,
                # True: saved at the end of an epoch before its evaluation, which a run
                # resumed from here runs first.
                "eval_pending": eval_pending,
            },
        )
        if lock is not None:
            lock.touch()

    def flush_train_metrics() -> None:
        nonlocal window_start, window_steps
        means, first_bad = sums.result()
        if first_bad is not None:
            raise TrainingDiverged(
                f"step {first_bad} (epoch {first_bad // steps_per_epoch + 1}) produced a "
                "non-finite loss or state; stopped without saving it. "
                f"{checkpoints.newest_finite_hint()} Lower optim.learning_rate or check the data."
            )
        if means and window_steps:
            elapsed = time.perf_counter() - window_start
            means["img_per_s"] = window_steps * config.batch_size / elapsed
            writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
        window_start, window_steps = time.perf_counter(), 0

    def evaluate_epoch(epochs_done: int) -> None:
        """The end-of-epoch evaluation, then the best checkpoints it selects."""
        nonlocal last_eval
        eval_totals = evaluation_counts(p_eval, replicated, eval_batches(config))
        correct, totals = eval_totals["correct"], eval_totals["totals"]
        last_eval = evaluation_body(
            eval_totals,
            group_masks,
            taus=step_cfg.eval.taus,
            aggregation=step_cfg.eval.aggregation,
        )
        writer.write_scalars(step, eval_scalars(last_eval))
        if jax.process_index() == 0:
            writer.write_images(
                step,
                {"eval/per_class_top1": per_class_image(correct[0], totals, info, config)},
            )
        at = {"epoch": epochs_done, "step": step, **last_eval}
        if last_eval["ensemble"]["top1"] > best["ensemble"]:
            best["ensemble"] = last_eval["ensemble"]["top1"]
            best_evals["ensemble"] = at
            save("best_ensemble", epochs_done)
        if last_eval["best_single"]["top1"] > best["single"]:
            best["single"] = last_eval["best_single"]["top1"]
            best_evals["single"] = at
            save("best_single", epochs_done)

    def stopped(signal_name: str) -> dict:
        checkpoints.wait()
        logging.warning(
            "%s: saved step %d in %s/checkpoints; rerun the same command to resume.",
            signal_name,
            step,
            workdir,
        )
        return {"step": step, "preempted": True, "stopped_by": signal_name, "best": best}

    finished = _finished_result(workdir, step) if meta.get("eval_pending") else None
    if finished is not None:  # a finished run rerun: its evaluation is in result.json
        best, last_eval = finished["best"], finished["final"]
        best_evals = finished.get("best_evals", {})
    elif meta.get("eval_pending"):
        logging.info(
            "Running the evaluation of epoch %d, pending in its checkpoint.", meta["epoch"]
        )
        evaluate_epoch(int(meta["epoch"]))

    catch_sigint = jax.process_count() == 1
    on_abort = lock.release if lock is not None else None
    with StopSignals(catch_sigint=catch_sigint, on_abort=on_abort) as stop:
        for epoch in range(step // steps_per_epoch, config.num_epochs):
            start = step - epoch * steps_per_epoch
            epoch_end = (epoch + 1) * steps_per_epoch
            batches = data.train_iterator(
                config.dataset,
                global_batch_size=config.batch_size,
                seed=config.seed,
                epoch=epoch,
                start_step=start,
                two_views=bool(config.moco.enabled),
                num_local_devices=jax.local_device_count(),
                process_index=jax.process_index(),
                process_count=jax.process_count(),
            )
            for batch in itertools.islice(batches, steps_per_epoch - start):
                replicated, step_metrics = p_train(replicated, batch)
                sums.add(step_metrics)
                step, window_steps = step + 1, window_steps + 1
                progress(step)
                if step % config.log_every_steps == 0:
                    flush_train_metrics()
                # At the epoch's last step the epoch's own checkpoint below is the stop.
                if step < epoch_end and _preempted(stop, checkpoints, step):
                    flush_train_metrics()
                    save("checkpoints", epoch)
                    return stopped(stop.received or "SIGTERM")
            flush_train_metrics()
            epochs_done = epoch + 1
            eval_due = (
                epochs_done % config.eval_every_epochs == 0 or epochs_done == config.num_epochs
            )
            stopping = _preempted(stop, checkpoints, step)
            if (
                epochs_done % config.checkpoint_every_epochs == 0
                or epochs_done == config.num_epochs
                or stopping
            ):
                # Committed before the evaluation, so nothing it raises loses the epoch.
                save("checkpoints", epochs_done, eval_pending=eval_due)
                checkpoints.wait()
            if stopping:
                return stopped(stop.received or "SIGTERM")
            if eval_due:
                evaluate_epoch(epochs_done)
                if catch_sigint and stop.received:  # a signal during the evaluation
                    return stopped(stop.received)
    checkpoints.wait()
    writer.flush()
    result = {
        "step": step,
        "preempted": False,
        "best": best,
        "final": last_eval,
        "best_evals": best_evals,
        # The paper and the official code select the best epoch on this split: for CIFAR it is
        # the test set. Reports label best-epoch numbers with it.
        "selection_split": config.dataset.eval_split,
        "selection_rule": (
            "last = the final epoch; best_evals = the evaluated epoch with the highest ensemble "
            f"(resp. best single expert) top-1 on the {config.dataset.eval_split!r} split, raw "
            "logits; the paper and the official code select on the test set the same way"
        ),
        "model_cost": cost,
    }
    if jax.process_index() == 0:
        write_json_atomically(f"{workdir}/{RESULT_FILE}", result)
    return result


def _preempted(stop: StopSignals, checkpoints: RunCheckpoints, step: int) -> bool:
    if jax.process_count() == 1:
        return stop.received is not None
    return checkpoints.reached_preemption(step)  # all hosts agree on the same step


def _finished_result(workdir: str, step: int) -> dict | None:
    """result.json of a run that finished at `step` (rerun after it ended), else None."""
    result = read_result(workdir)
    return result if result and result.get("step") == step else None


def _restore_for_resume(checkpoints: RunCheckpoints, target, resume_step: int | None):
    """(state, meta) to continue from, or None for a fresh run.

    Without resume_step: the newest periodic checkpoint that is readable and finite; each one
    skipped is named in a warning. Checkpoints newer than the one chosen (of any kind) are
    moved to WORKDIR/set_aside, so the resumed run can write those steps again."""
    if resume_step is not None:
        kind, chosen = checkpoints.find(resume_step)
        restored = checkpoints.restore(kind, chosen, target)
    else:
        candidates = checkpoints.steps()
        if not candidates:
            return None
        restored = None
        for chosen in reversed(candidates):
            try:
                restored = checkpoints.restore("checkpoints", chosen, target)
                break
            except CheckpointError as err:
                logging.warning("Skipping checkpoint %d: %s", chosen, err)
        if restored is None:
            raise CheckpointError(
                f"none of the checkpoints {candidates} in {checkpoints.workdir}/checkpoints can "
                "be resumed (see the warnings above); they were left untouched: move them "
                "away or use a new --workdir."
            )
    newer = {
        kind: [s for s in checkpoints.steps(kind) if s > chosen]
        for kind in ("checkpoints", "best_ensemble", "best_single")
    }
    if any(newer.values()):
        moved = checkpoints.set_aside({k: v for k, v in newer.items() if v})
        logging.warning("Resuming from step %d: moved newer checkpoints to %s.", chosen, moved)
    return restored


def _hparams(config: ml_collections.ConfigDict) -> dict:
    """The config as flat TensorBoard hparams (non-scalars as strings)."""
    flat = traverse_util.flatten_dict(config.to_dict(), sep=".")
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flat.items()}
