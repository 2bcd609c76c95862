"""Evaluation: top-1 overall and on many/medium/few classes, per expert and for the ensemble.

As in the official code, predictions use the raw logits (no prior correction) and the
ensemble is the argmax of the mean of the K experts' logits. Used every epoch by the training
loop, and on any Orbax checkpoint of a workdir on any number of devices
(`ncl_jax.training.saved_runs.evaluate_saved_run`, the program `python -m ncl_jax.evaluate`).
Reads nothing from a workdir and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

import jax
import numpy as np

from ncl_jax import data
from ncl_jax.core.metrics import GROUPS, evaluation_result
from ncl_jax.core.train_step import unreplicate


def evaluation_counts(p_eval_counts, replicated_state, batches: Iterable[dict]):
    """Runs the pmapped per-class counting step over all eval batches (padded, masked):
    correct [T, K + 1, C] (per tau: experts, then the ensemble) and totals [C], on the host."""
    correct = totals = None
    for batch in batches:
        # psum'ed over the pmap axis, which spans the devices of every process.
        c, t = unreplicate(p_eval_counts(replicated_state, batch))
        correct = c if correct is None else correct + c
        totals = t if totals is None else totals + t
    if correct is None:
        raise ValueError("the evaluation split is empty; check dataset.eval_split.")
    return correct, totals


def run_evaluation(
    p_eval_counts,
    replicated_state,
    batches: Iterable[dict],
    group_masks: dict[str, np.ndarray],
    *,
    taus=(0.0,),
    aggregation: str = "mean_logits",
) -> dict:
    """The evaluation JSON (metrics.evaluation_result) of `evaluation_counts`; taus and
    aggregation must be those the step was built with (StepConfig.eval)."""
    correct, totals = evaluation_counts(p_eval_counts, replicated_state, batches)
    return evaluation_result(correct, totals, group_masks, taus=taus, aggregation=aggregation)


def format_table(result: dict) -> str:
    """Fixed-width tables of the evaluation JSON: raw logits, then each logit adjustment."""
    tables = [_table(result)]
    for tau, body in result.get("logit_adjusted", {}).items():
        tables.append(f"logit adjustment tau={tau}:\n" + _table(body))
    return "\n\n".join(tables)


def _table(result: dict) -> str:
    header = f"{'model':<14}{'top1':>8}" + "".join(f"{g:>8}" for g in GROUPS)
    fmt = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"
    rows = [(f"expert {i}", e) for i, e in enumerate(result["experts"])]
    rows += [
        ("ensemble", result["ensemble"]),
        (f"best single({result['best_single']['expert']})", result["best_single"]),
    ]
    lines = [header, "-" * len(header)]
    lines += [
        f"{name:<14}" + fmt(r["top1"]) + "".join(fmt(r[g]) for g in GROUPS) for name, r in rows
    ]
    return "\n".join(lines)


def eval_batches(config):
    """The evaluation split as device-sharded batches for however many devices are here."""
    return data.eval_iterator(
        config.dataset,
        global_batch_size=data.eval_batch_for(config.eval_batch_size, jax.device_count()),
        num_local_devices=jax.local_device_count(),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
