"""The training loop: `train_and_evaluate(config, workdir) -> final metrics`.

Resumes automatically from the newest checkpoint in the workdir (same epoch, step, data
position and RNG, so a killed run ends with exactly the parameters of an uninterrupted one),
evaluates every `eval_every_epochs`, keeps best-by-ensemble and best-by-single checkpoints
(selected on the evaluation split, as the official code does), stops cleanly on SIGTERM with a
checkpoint, and stops on a non-finite loss without saving the bad state.
"""

from __future__ import annotations

import itertools
import signal
import time

import jax
import ml_collections
from absl import logging
from clu import metric_writers, periodic_actions

from ncl_jax import builders, data
from ncl_jax.checkpointing import RunCheckpoints
from ncl_jax.config_utils import validate_config
from ncl_jax.errors import TrainingDiverged
from ncl_jax.evaluate import run_evaluation
from ncl_jax.metrics import MetricSums
from ncl_jax.train_step import pmap_eval_counts_step, pmap_train_step, replicate, unreplicate


class _SigtermFlag:
    """Records SIGTERM (preemption) so the loop can checkpoint at the next step boundary."""

    def __init__(self):
        self.received = False
        self._previous = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.received = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self._previous)


def resolve_steps_per_epoch(config: ml_collections.ConfigDict, info) -> int:
    full = data.steps_per_epoch(info, config.batch_size)
    return min(full, config.steps_per_epoch) if config.steps_per_epoch > 0 else full


def _eval_scalars(result: dict) -> dict[str, float]:
    out = {}
    named = [(f"expert_{i}", r) for i, r in enumerate(result["experts"])]
    named += [("ensemble", result["ensemble"]), ("best_single", result["best_single"])]
    for name, scores in named:
        for key in ("top1", "many", "medium", "few"):
            if scores[key] is not None:
                out[f"eval/{name}/{key}"] = scores[key]
    return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains NCL as configured into `workdir` and returns the final metrics."""
    validate_config(config, num_devices=jax.device_count(), num_processes=jax.process_count())
    checkpoints = RunCheckpoints(workdir, keep=config.keep_checkpoints)
    checkpoints.check_or_write_config(config)
    info = data.get_dataset_info(config.dataset)
    steps_per_epoch = resolve_steps_per_epoch(config, info)
    total_steps = steps_per_epoch * config.num_epochs
    step_cfg = builders.make_step_config(
        config, class_counts=info.class_counts, steps_per_epoch=steps_per_epoch
    )

    meta: dict = {}
    latest = checkpoints.latest_step()
    if latest is None:
        state = builders.create_state(config, step_cfg)
    else:
        state, meta = checkpoints.restore(
            "checkpoints", latest, builders.abstract_state(config, step_cfg)
        )
        logging.info(
            "Resuming from %s/checkpoints/%d (epoch %s).", workdir, latest, meta.get("epoch")
        )
    step = int(state.step)
    replicated = replicate(state)
    del state
    p_train, p_eval = pmap_train_step(step_cfg), pmap_eval_counts_step(step_cfg)
    group_masks = info.group_masks(config.group_rule)

    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    if step == 0:
        writer.write_hparams(dict(_flat_config(config)))
    progress = periodic_actions.ReportProgress(
        num_train_steps=total_steps, writer=writer, every_steps=config.log_every_steps
    )
    best = dict(meta.get("best", {"ensemble": -1.0, "single": -1.0}))
    last_eval: dict = meta.get("last_eval", {})
    sums, window_start, window_steps = MetricSums(), time.perf_counter(), 0

    def save(kind: str, epoch: int) -> None:
        checkpoints.save(
            kind,
            step,
            unreplicate(replicated),
            {"epoch": epoch, "step": step, "best": best, "last_eval": last_eval},
        )

    def flush_train_metrics() -> None:
        nonlocal window_start, window_steps
        means, first_bad = sums.result()
        if first_bad is not None:
            raise TrainingDiverged(
                f"the loss became non-finite at step {first_bad} (epoch "
                f"{first_bad // steps_per_epoch + 1}); stopped without saving. The last good "
                f"checkpoint is step {checkpoints.latest_step()} in {workdir}/checkpoints; "
                "lower optim.learning_rate or check the data."
            )
        if means and window_steps:
            elapsed = time.perf_counter() - window_start
            means["img_per_s"] = window_steps * config.batch_size / elapsed
            writer.write_scalars(step, {f"train/{k}": v for k, v in means.items()})
        window_start, window_steps = time.perf_counter(), 0

    with _SigtermFlag() as sigterm:
        for epoch in range(step // steps_per_epoch, config.num_epochs):
            start = step - epoch * steps_per_epoch
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
                if _preempted(sigterm, checkpoints, step):
                    flush_train_metrics()
                    save("checkpoints", epoch)
                    checkpoints.wait()
                    logging.warning(
                        "SIGTERM: saved step %d; rerun the same command to resume.", step
                    )
                    return {"step": step, "preempted": True, "best": best}
            flush_train_metrics()
            epochs_done = epoch + 1
            if epochs_done % config.eval_every_epochs == 0 or epochs_done == config.num_epochs:
                last_eval = run_evaluation(p_eval, replicated, _eval_batches(config), group_masks)
                writer.write_scalars(step, _eval_scalars(last_eval))
                if last_eval["ensemble"]["top1"] > best["ensemble"]:
                    best["ensemble"] = last_eval["ensemble"]["top1"]
                    save("best_ensemble", epochs_done)
                if last_eval["best_single"]["top1"] > best["single"]:
                    best["single"] = last_eval["best_single"]["top1"]
                    save("best_single", epochs_done)
            if (
                epochs_done % config.checkpoint_every_epochs == 0
                or epochs_done == config.num_epochs
            ):
                save("checkpoints", epochs_done)
    checkpoints.wait()
    checkpoints.close()
    writer.flush()
    return {"step": step, "preempted": False, "best": best, "final": last_eval}


def _preempted(sigterm: _SigtermFlag, checkpoints: RunCheckpoints, step: int) -> bool:
    if jax.process_count() == 1:
        return sigterm.received
    return checkpoints.reached_preemption(step)  # all hosts agree on the same step


def _eval_batches(config):
    return data.eval_iterator(
        config.dataset,
        global_batch_size=config.eval_batch_size,
        num_local_devices=jax.local_device_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def _flat_config(config, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _flat_config(value, f"{prefix}{key}.")
        else:
            yield (
                f"{prefix}{key}",
                value if isinstance(value, int | float | str | bool) else str(value),
            )
