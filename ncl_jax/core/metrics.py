"""Every metric definition: training metrics, per-class evaluation counts, group accuracies.

Training metrics leave the step as (sum, count) pairs, so padding, devices and hosts all sum
exactly; they stay on device between log steps (no per-step host sync, so input and compute
keep overlapping) and are reduced only when written. Evaluation is reduced on device to
per-class correct counts; `accuracy_summary` turns those into the evaluation JSON.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

NONFINITE_KEY = "first_nonfinite_step"
GROUPS = ("many", "medium", "few")
_NO_STEP = np.iinfo(np.int32).max


# ---------------------------------------------------------------------------- training
def pair(total, count) -> jax.Array:
    """A metric as float32 (sum, count)."""
    return jnp.stack([jnp.asarray(total, jnp.float32), jnp.asarray(count, jnp.float32)])


def train_metrics(loss, aux: dict, logits, labels) -> dict[str, jax.Array]:
    """The step's metrics on this device's shard: the loss and every loss term in `aux`
    (batch means), training top-1 of each expert and of the ensemble (mean of logits).
    logits [K, b, C], labels [b]."""
    local_batch = labels.shape[0]
    metrics = {"loss": pair(loss * local_batch, local_batch)}
    for name, value in aux.items():
        metrics[name] = pair(value * local_batch, local_batch)
    correct = jnp.argmax(logits, axis=-1) == labels[None]  # [K, b]
    for k in range(logits.shape[0]):
        metrics[f"accuracy/expert_{k}"] = pair(jnp.sum(correct[k]), local_batch)
    ensemble = jnp.argmax(jnp.mean(logits, axis=0), axis=-1) == labels
    metrics["accuracy/ensemble"] = pair(jnp.sum(ensemble), local_batch)
    return metrics


# A healthy network never holds a value this large; an update that diverged does, and so
# does every state after it. At |x| >= 2**64 a square overflows float32, so such a state
# is one step from Inf even while every value is still finite.
MAX_ABS_VALUE = 2.0**64


def all_finite(tree) -> jax.Array:
    """bool scalar: every floating-point leaf of `tree` is free of NaN/Inf and below
    MAX_ABS_VALUE in magnitude. One fused max-reduction per leaf on device (optax only offers
    skipping non-finite updates, not this test)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    if not leaves:
        return jnp.bool_(True)
    # NaN compares False, so a NaN anywhere makes the result False too.
    return jnp.all(jnp.stack([jnp.max(jnp.abs(x)) < MAX_ABS_VALUE for x in leaves]))


def nonfinite_marker(finite, step):
    """The step number if `finite` is False, else int32 max (combined over steps with min)."""
    return jnp.where(finite, _NO_STEP, step).astype(jnp.int32)


def tree_is_finite(tree) -> bool:
    """Host version of `all_finite` for trees of numpy arrays (checkpoints being written or
    just read); None leaves are skipped."""
    for x in jax.tree.leaves(tree):
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.inexact) and x.size:
            if not np.max(np.abs(x)) < MAX_ABS_VALUE:  # also False for NaN
                return False
    return True


@jax.jit
def _combine(total, new):
    return {
        k: jnp.minimum(total[k], v) if k == NONFINITE_KEY else total[k] + v for k, v in new.items()
    }


class MetricSums:
    """Running sums of per-device metric pairs [D, 2] (and the min non-finite step)."""

    def __init__(self):
        self._total = None

    def add(self, metrics: dict) -> None:
        self._total = metrics if self._total is None else _combine(self._total, metrics)

    def result(self) -> tuple[dict[str, float], int | None]:
        """(means over everything added, first step whose loss or new state was not finite, or
        None); resets."""
        if self._total is None:
            return {}, None
        host = jax.device_get(self._total)
        self._total = None
        if jax.process_count() > 1:  # every process logs the same global means
            host = multihost_utils.process_allgather(host)
        first_bad = int(np.min(host.pop(NONFINITE_KEY, _NO_STEP)))
        means = {}
        for name, value in host.items():
            total, count = np.asarray(value, np.float64).reshape(-1, 2).sum(0)
            means[name] = float(total / count) if count else float("nan")
        return means, (None if first_bad == _NO_STEP else first_bad)


# ---------------------------------------------------------------------------- evaluation
AGGREGATIONS = ("mean_logits", "mean_probs")


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How an evaluation scores the ensemble and which post-hoc adjustments it reports, one
    per `eval_*` config field (`eval_aggregation`, `eval_tau`; filled by
    `ncl_jax.config.builders`). No defaults here: the config owns them."""

    aggregation: str  # AGGREGATIONS: mean of the experts' logits (paper) or probabilities
    tau: tuple[float, ...]  # logit adjustments z - tau log(prior) reported besides raw logits

    def __post_init__(self):
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(
                f"eval_aggregation={self.aggregation!r} is unknown; use one of {AGGREGATIONS}."
            )

    @property
    def taus(self) -> tuple[float, ...]:
        """0 (the raw logits, always reported first), then the other taus, once each."""
        others = [float(t) for t in self.tau if float(t) != 0]
        return (0.0, *dict.fromkeys(others))


def ensemble_scores(logits, aggregation: str = "mean_logits"):
    """Scores whose argmax is the ensemble's prediction: the mean of the K experts' logits
    (the paper and the official code) or of their softmax probabilities. logits [K, b, C]."""
    if aggregation == "mean_logits":
        return jnp.mean(logits, axis=0)
    if aggregation == "mean_probs":
        return jnp.mean(jax.nn.softmax(logits.astype(jnp.float32), axis=-1), axis=0)
    raise ValueError(f"aggregation={aggregation!r}; use one of {AGGREGATIONS}.")


def adjust_logits(logits, log_prior, tau: float):
    """Post-hoc logit adjustment: logits - tau * log(prior) (Menon et al.); tau = 0 returns
    the logits unchanged (bit for bit). log_prior [C] = log(n_c / sum n)."""
    return logits if tau == 0 else logits - tau * log_prior


def per_class_correct(
    logits, labels, mask, *, log_prior=None, taus=(0.0,), aggregation: str = "mean_logits"
):
    """Correct counts per class for each expert and the ensemble, for each adjustment tau.

    logits [K, b, C], labels int [b], mask bool [b] (False on padding), log_prior [C] (needed
    when a tau is not 0). Returns correct [T, K + 1, C] (per tau: experts, then the ensemble
    by `aggregation`) and totals [C], counting only mask=True examples."""
    num_classes = logits.shape[-1]
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * mask[:, None]
    out = []
    for tau in taus:
        adjusted = adjust_logits(logits, log_prior, tau)
        preds = jnp.concatenate(
            [
                jnp.argmax(adjusted, -1),
                jnp.argmax(ensemble_scores(adjusted, aggregation), -1)[None],
            ],
            axis=0,
        )  # [K+1, b]
        out.append((preds == labels[None]).astype(jnp.float32) @ onehot)
    return jnp.stack(out), jnp.sum(onehot, axis=0)


def likelihood_sums(
    logits, labels, mask, *, log_prior=None, taus=(0.0,), aggregation: str = "mean_logits"
) -> dict:
    """The sums behind NLL and ECE, for each adjustment tau, each expert and the ensemble.

    logits [K, b, C], labels [b], mask [b], log_prior [C] (needed when a tau is not 0).
    Returns {"nll": [T, K + 1] sums of -log p(label), "calibration": [T, K + 1, bins, 3]
    (`calibration_sums`)}, p the softmax of each model (the ensemble's by `aggregation`,
    as `model_log_probs`), padding excluded."""
    nll, calibration = [], []
    for tau in taus:
        log_probs = model_log_probs(adjust_logits(logits, log_prior, tau), aggregation)
        label_log_probs = jnp.take_along_axis(log_probs, labels[None, :, None], axis=-1)[..., 0]
        nll.append(-jnp.sum(jnp.where(mask, label_log_probs, 0.0), axis=-1))
        calibration.append(calibration_sums(log_probs, labels, mask))
    return {"nll": jnp.stack(nll), "calibration": jnp.stack(calibration)}


def accuracy_summary(
    correct: np.ndarray, totals: np.ndarray, group_masks: dict[str, np.ndarray]
) -> dict:
    """correct [K + 1, C] (experts, then ensemble) and totals [C] -> the evaluation JSON body:
    {num_examples, experts: [{top1, many, medium, few}], ensemble, best_single: {..., expert}}.

    Accuracies are in percent; a group without test images reports null.
    """
    correct, totals = np.asarray(correct, np.float64), np.asarray(totals, np.float64)

    def scores(row: np.ndarray) -> dict:
        out = {"top1": 100.0 * row.sum() / max(totals.sum(), 1.0)}
        for group in GROUPS:
            mask = group_masks[group]
            n = totals[mask].sum()
            out[group] = 100.0 * row[mask].sum() / n if n > 0 else None
        return out

    experts = [scores(row) for row in correct[:-1]]
    best = int(np.argmax([e["top1"] for e in experts]))
    return {
        "num_examples": int(totals.sum()),
        "experts": experts,
        "ensemble": scores(correct[-1]),
        "best_single": {**experts[best], "expert": best},
    }


def evaluation_result(
    correct: np.ndarray,
    totals: np.ndarray,
    group_masks: dict[str, np.ndarray],
    *,
    taus=(0.0,),
    aggregation: str = "mean_logits",
) -> dict:
    """The evaluation JSON from per-tau counts correct [T, K + 1, C] (taus[0] must be 0):
    the raw-logit summary at the top level, as before logit adjustment existed, plus
    `aggregation` and, for every other tau, `logit_adjusted[str(tau)]` with the same body."""
    if taus[0] != 0:
        raise ValueError(f"taus={taus}: the first must be 0 (the raw logits).")
    result = {**accuracy_summary(correct[0], totals, group_masks), "aggregation": aggregation}
    if len(taus) > 1:
        result["logit_adjusted"] = {
            f"{tau:g}": accuracy_summary(correct[t], totals, group_masks)
            for t, tau in enumerate(taus)
            if t > 0
        }
    return result


def eval_scalars(result: dict) -> dict[str, float]:
    """The evaluation JSON as flat TensorBoard scalars `eval/<model>/<metric>` (and
    `eval_tau<tau>/...` for each logit adjustment)."""
    out = {}
    bodies = [("eval", result)]
    bodies += [(f"eval_tau{tau}", body) for tau, body in result.get("logit_adjusted", {}).items()]
    for prefix, body in bodies:
        named = [(f"expert_{i}", r) for i, r in enumerate(body["experts"])]
        named += [("ensemble", body["ensemble"]), ("best_single", body["best_single"])]
        for name, scores in named:
            for key in ("top1", *GROUPS):
                if scores[key] is not None:
                    out[f"{prefix}/{name}/{key}"] = scores[key]
    return out


# ---------------------------------------------------------------------------- analysis
# Per-sample quantities reduced on device to per-class or per-bin sums (never all logits on the
# host, so 10^5-image, 10^3-class evaluation sets fit), turned into numbers on the host.
CALIBRATION_BINS = 15  # ECE bins, as in Guo et al. (2017) and most long-tail papers
HARDEST_NEGATIVE_BINS = 20  # histogram of the hardest negative's probability on [0, 1]


def model_log_probs(logits, aggregation: str = "mean_logits"):
    """Log-probabilities [K + 1, b, C] of each expert and of the ensemble (float32).

    The ensemble's distribution follows `aggregation`: softmax of the mean logits (the
    paper's ensemble) or the mean of the experts' softmax probabilities. logits [K, b, C]."""
    logits = logits.astype(jnp.float32)
    experts = jax.nn.log_softmax(logits, axis=-1)
    if aggregation == "mean_logits":
        ensemble = jax.nn.log_softmax(jnp.mean(logits, axis=0), axis=-1)
    elif aggregation == "mean_probs":
        ensemble = jax.nn.logsumexp(experts, axis=0) - jnp.log(logits.shape[0])
    else:
        raise ValueError(f"aggregation={aggregation!r}; use one of {AGGREGATIONS}.")
    return jnp.concatenate([experts, ensemble[None]], axis=0)


def symmetric_kl(log_p, log_q):
    """(KL(p || q) + KL(q || p)) / 2 over the last axis, in nats. Averaged over a pair's two
    directions it is the paper's distillation distance (Eq. 8 sums both, over ordered pairs)
    on raw rather than balanced probabilities, as in Fig. 1 and Fig. 5b."""
    p, q = jnp.exp(log_p), jnp.exp(log_q)
    return 0.5 * jnp.sum((p - q) * (log_p - log_q), axis=-1)


def expert_pairs(num_experts: int) -> list[tuple[int, int]]:
    """The unordered expert pairs (i < j), in the order of `pairwise_kl_per_class`."""
    return [(i, j) for i in range(num_experts) for j in range(i + 1, num_experts)]


def pairwise_kl_per_class(log_probs, labels, mask):
    """Per-class sums of the symmetric KL between every pair of experts: [P, C] for the pairs
    of `expert_pairs(K)` (P = 0 when K = 1). log_probs [K, b, C] (experts only)."""
    num_classes = log_probs.shape[-1]
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * mask[:, None]
    pairs = expert_pairs(log_probs.shape[0])
    if not pairs:
        return jnp.zeros((0, num_classes), jnp.float32)
    kl = jnp.stack([symmetric_kl(log_probs[i], log_probs[j]) for i, j in pairs])  # [P, b]
    return kl @ onehot


def kl_per_class(log_p, log_q, labels, mask):
    """Per-class sums [C] of the symmetric KL between two models' predictions [b, C] (e.g.
    two separately trained networks, Fig. 1 and Fig. 5b for single-model baselines)."""
    onehot = jax.nn.one_hot(labels, log_p.shape[-1], dtype=jnp.float32) * mask[:, None]
    return symmetric_kl(log_p, log_q) @ onehot


def hardest_negative_probability(log_probs, labels):
    """The largest probability given to a class other than the label, per sample (Fig. 5a:
    the score of the hardest negative category). log_probs [..., b, C] -> [..., b]."""
    is_label = jax.nn.one_hot(labels, log_probs.shape[-1], dtype=jnp.bool_)
    return jnp.max(jnp.where(is_label, 0.0, jnp.exp(log_probs)), axis=-1)


def histogram_counts(values, mask, num_bins: int):
    """Counts [..., num_bins] of values in [0, 1] over equal bins [i/n, (i+1)/n) (1.0 goes to
    the last bin); mask [b] drops padding. values [..., b]."""
    index = jnp.clip(jnp.floor(values * num_bins).astype(jnp.int32), 0, num_bins - 1)
    return jnp.sum(jax.nn.one_hot(index, num_bins, dtype=jnp.float32) * mask[:, None], axis=-2)


def calibration_sums(log_probs, labels, mask, num_bins: int = CALIBRATION_BINS):
    """Per confidence bin: (count, sum of confidence, sum of correct) -> [..., num_bins, 3].

    Confidence is the top softmax probability and correct means its class is the label; bin
    i holds confidences in (i/n, (i+1)/n] (Guo et al., 2017). log_probs [..., b, C]."""
    confidence = jnp.exp(jnp.max(log_probs, axis=-1))
    correct = (jnp.argmax(log_probs, axis=-1) == labels).astype(jnp.float32)
    index = jnp.clip(jnp.ceil(confidence * num_bins).astype(jnp.int32) - 1, 0, num_bins - 1)
    in_bin = jax.nn.one_hot(index, num_bins, dtype=jnp.float32) * mask[:, None]  # [..., b, n]
    per_sample = jnp.stack([jnp.ones_like(confidence), confidence, correct], axis=-1)
    return jnp.einsum("...bn,...bs->...ns", in_bin, per_sample)


def expected_calibration_error(sums: np.ndarray) -> float:
    """ECE = sum_i (n_i / N) |accuracy_i - confidence_i|, as a fraction, from one model's
    `calibration_sums` [num_bins, 3]."""
    sums = np.asarray(sums, np.float64)
    count, confidence, correct = sums[:, 0], sums[:, 1], sums[:, 2]
    if count.sum() == 0:
        return float("nan")
    return float(np.sum(np.abs(correct - confidence)) / count.sum())


def confusion_counts(predictions, labels, mask, num_classes: int):
    """Confusion matrix [C, C]: row = true class, column = predicted class."""
    truth = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) * mask[:, None]
    return truth.T @ jax.nn.one_hot(predictions, num_classes, dtype=jnp.float32)
