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
import jax.numpy as jnp
import numpy as np

from ncl_jax import data
from ncl_jax.core.metrics import GROUPS
from ncl_jax.core.train_step import unreplicate
from ncl_jax.evaluation.tail_metrics import evaluation_body


def evaluation_counts(p_eval_counts, replicated_state, batches: Iterable[dict]) -> dict:
    """Runs the pmapped evaluation step over all eval batches (padded, masked) and sums its
    `core.train_step.eval_sums` on device; returns them on the host: correct [T, K + 1, C]
    (per tau: experts, then the ensemble), totals [C], nll [T, K + 1], calibration
    [T, K + 1, bins, 3]."""
    total = None
    for batch in batches:
        # psum'ed over the pmap axis, which spans the devices of every process.
        sums = p_eval_counts(replicated_state, batch)
        total = sums if total is None else _accumulate(total, sums)
    if total is None:
        raise ValueError("the evaluation split is empty; check dataset.eval_split.")
    return unreplicate(total)


@jax.jit
def _accumulate(total, new):
    return jax.tree.map(jnp.add, total, new)


def run_evaluation(
    p_eval_counts,
    replicated_state,
    batches: Iterable[dict],
    group_masks: dict[str, np.ndarray],
    *,
    taus=(0.0,),
    aggregation: str = "mean_logits",
) -> dict:
    """The evaluation JSON (tail_metrics.evaluation_body) of `evaluation_counts`; taus and
    aggregation must be those the step was built with (StepConfig.eval)."""
    sums = evaluation_counts(p_eval_counts, replicated_state, batches)
    return evaluation_body(sums, group_masks, taus=taus, aggregation=aggregation)


def format_table(result: dict) -> str:
    """Fixed-width tables of the evaluation JSON: raw logits, then each logit adjustment."""
    tables = [_table(result)]
    for tau, body in result.get("logit_adjusted", {}).items():
        tables.append(f"logit adjustment tau={tau}:\n" + _table(body))
    return "\n\n".join(tables)


def _table(result: dict) -> str:
    columns = [("top1", "top1"), *((g, g) for g in GROUPS)]
    columns += [("worst_class", "worst"), ("hmean", "hmean"), ("gmean", "gmean")]
    header = f"{'model':<14}" + "".join(f"{title:>8}" for _, title in columns)
    header += f"{'NLL':>8}{'ECE %':>8}"
    fmt = lambda v: f"{v:8.2f}" if v is not None else f"{'-':>8}"
    rows = [(f"expert {i}", e) for i, e in enumerate(result["experts"])]
    rows += [
        ("ensemble", result["ensemble"]),
        (f"best single({result['best_single']['expert']})", result["best_single"]),
    ]
    lines = [header, "-" * len(header)]
    for name, r in rows:
        ece = r.get("ece")
        lines.append(
            f"{name:<14}"
            + "".join(fmt(r.get(key)) for key, _ in columns)
            + (f"{r['nll']:8.3f}" if r.get("nll") is not None else f"{'-':>8}")
            + fmt(None if ece is None or ece != ece else 100 * ece)
        )
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
