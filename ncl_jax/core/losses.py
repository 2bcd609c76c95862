"""Every NCL equation as a named pure function (paper Eqs. 2-12; the official code's forms as
listed in docs/design.md, "Paper and official code").

Shapes: logits are float[K, B, C] raw classifier outputs of K experts, labels int[B],
class_counts float[C]. Losses are averaged over the batch and summed over experts, as in both
the paper and the official code. All arithmetic runs in float32 whatever the compute dtype.

`LossOptions` holds every choice and weight of the supervised part, one field per `loss.*`
config field of the same name (filled by `ncl_jax.config.builders`). The two readings of NCL
differ in five of them (presets in `ncl_jax.config.variants.PRESETS`):
  hard_probs     "restricted": softmax over the hard set Psi only (Eq. 4);
                 "masked_logits": balanced logits times a 0/1 mask, the zeros stay in the
                 softmax (official `loss.py`).
  nil_hard_set   "per_expert": each expert mines its own Psi (Eq. 3); "anchor": one shared set.
  anchor         which expert mines the shared hard set: "random" per step, or "first" (expert
                 0); the step draws it and passes its index as `anchor_expert`.
  distill_norm   "pairs": 1/(K(K-1)) over ordered pairs (Eqs. 8-9); "experts": 1/(K-1).
  distill_log_eps  0: exact log-softmax; 1e-9: the official log(softmax + 1e-9) on the student.
Two more switch NCL's components off for the paper's baselines and ablations:
  balanced          False: plain softmax (z instead of z + log n) in NIL and NBOD, i.e. CE
                    (the CE column of Tables 4-5); with K=1 and no other term, exactly CE.
  distill_balanced  False: NBOD distils unbalanced probabilities (NOD, Fig. 6a) while NIL
                    stays balanced.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

# Filler for logits outside the hard set. Finite on purpose: exp() underflows to exactly 0,
# while -inf would turn 0 * log(0) into NaN gradients.
_EXCLUDED_LOGIT = -1e30


HARD_PROBS = ("restricted", "masked_logits")
NIL_HARD_SETS = ("per_expert", "anchor")
ANCHORS = ("random", "first")
DISTILL_NORMS = ("pairs", "experts")


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """The supervised loss's weights and choices (Eq. 12 without L_con), one per `loss.*`
    config field of the same name; no defaults here: the config (`ncl_jax.config.base`) owns
    them. Raises ValueError for a choice outside the lists above."""

    num_hard: int  # hard NEGATIVE classes in Psi (official HCM_N - 1)
    nil_hard_weight: float  # NIL = NIL-all + nil_hard_weight * NIL-hard (1 in NCL)
    distill_weight: float  # lambda on NBOD-all
    hard_distill_weight: float  # lambda on NBOD-hard
    balanced: bool
    distill_balanced: bool
    hard_probs: str  # HARD_PROBS
    nil_hard_set: str  # NIL_HARD_SETS
    anchor: str  # ANCHORS
    distill_norm: str  # DISTILL_NORMS
    distill_log_eps: float
    teacher_stop_gradient: bool  # stop gradients through the KL target (DML-style)

    def __post_init__(self):
        _check_choice("hard_probs", self.hard_probs, HARD_PROBS)
        _check_choice("nil_hard_set", self.nil_hard_set, NIL_HARD_SETS)
        _check_choice("anchor", self.anchor, ANCHORS)
        _check_choice("distill_norm", self.distill_norm, DISTILL_NORMS)
        if self.distill_log_eps < 0:
            raise ValueError(f"distill_log_eps={self.distill_log_eps} must be >= 0.")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"loss.{name}={value!r} is unknown; use one of {choices}.")


# ----------------------------------------------------------------------------- validation


def validate_loss_inputs(logits, labels, class_counts, num_hard: int) -> None:
    """Checks shapes (always static) and counts (when concrete) before anything compiles."""
    if logits.ndim != 3:
        raise ValueError(
            f"logits must be rank 3 [K, B, C] (experts, batch, classes); got shape "
            f"{tuple(logits.shape)}. Stack the experts' logits on a leading axis."
        )
    k, b, c = logits.shape
    if k < 1:
        raise ValueError(f"K={k}: NCL needs at least one expert (model.num_experts >= 1).")
    if labels.shape != (b,):
        raise ValueError(f"labels must have shape [B]=({b},); got {tuple(labels.shape)}.")
    if class_counts.shape != (c,):
        raise ValueError(
            f"class_counts must have shape [C]=({c},); got {tuple(class_counts.shape)}."
        )
    if not 1 <= num_hard < c:
        raise ValueError(
            f"num_hard={num_hard} hard negatives is out of range for C={c} classes; "
            f"use 1 <= num_hard <= {c - 1} (e.g. loss.hard_ratio * C)."
        )
    if not isinstance(class_counts, jax.core.Tracer):
        counts = np.asarray(class_counts)
        if np.any(counts <= 0):
            bad = np.flatnonzero(counts <= 0)
            raise ValueError(
                f"class_counts must be > 0 for every class; classes {bad[:10].tolist()} have "
                f"{counts[bad[:10]].tolist()} images. Remove empty classes or lower the "
                "imbalance factor."
            )


# ----------------------------------------------------------------------------- Eq. 2


def balanced_logits(logits, class_counts):
    """Eq. 2 in log space: z + log(n). Raw counts, not priors (this matters for the official
    masked-logits HCM terms, where a constant shift does not cancel)."""
    return logits.astype(jnp.float32) + jnp.log(class_counts.astype(jnp.float32))


def cross_entropy(logits, labels):
    """Mean over the batch of -log softmax(logits)[label]; logits [..., B, C] -> [...]."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    index = jnp.broadcast_to(labels, logp.shape[:-1])[..., None]
    return -jnp.mean(jnp.take_along_axis(logp, index, axis=-1)[..., 0], axis=-1)


# ----------------------------------------------------------------------------- Eq. 3 (HCM)


def hard_category_mask(anchor_logits, labels, num_hard: int):
    """Eq. 3: Psi = the num_hard largest NON-ground-truth logits, plus the ground truth.

    anchor_logits [B, C] (raw, as in the paper and the official code); returns bool [B, C]
    with exactly num_hard + 1 True per row. Selection uses `lax.top_k` (ties: lower class
    index first); no gradient flows through it.
    """
    scores = jax.lax.stop_gradient(anchor_logits.astype(jnp.float32))
    b, c = scores.shape
    is_label = jax.nn.one_hot(labels, c, dtype=jnp.bool_)
    scores = jnp.where(is_label, jnp.inf, scores)  # force the ground truth in
    _, idx = jax.lax.top_k(scores, num_hard + 1)
    return jnp.zeros((b, c), jnp.bool_).at[jnp.arange(b)[:, None], idx].set(True)


def hard_log_probs(balanced, mask, mode: str):
    """Log-probabilities of the partial view (Eq. 4, or the official masked-logit form)."""
    if mode == "restricted":
        return jax.nn.log_softmax(jnp.where(mask, balanced, _EXCLUDED_LOGIT), axis=-1)
    return jax.nn.log_softmax(balanced * mask.astype(balanced.dtype), axis=-1)


# ----------------------------------------------------------------------------- Eqs. 5-7 (NIL)


def nil_all(balanced, labels):
    """Eq. 5: balanced softmax cross-entropy summed over experts. balanced [K, B, C]."""
    return jnp.sum(cross_entropy(balanced, labels))


def nil_hard(hard_logp, labels):
    """Eq. 6: -sum_k log p*_y over the hard set. hard_logp [K, B, C] (from hard_log_probs)."""
    index = jnp.broadcast_to(labels, hard_logp.shape[:-1])[..., None]
    picked = jnp.take_along_axis(hard_logp, index, axis=-1)[..., 0]
    return -jnp.sum(jnp.mean(picked, axis=-1))


# ----------------------------------------------------------------------------- Eqs. 8-10 (NBOD)


def pairwise_kl(logp, *, support=None, log_eps: float = 0.0, stop_teacher: bool = False):
    """sum over ordered pairs k != q of KL(p_k || p_q), batch-averaged. logp [K, B, C].

    KL(p_k || p_q) = sum_c p_k (log p_k - log p_q). `support` (bool [B, C]) restricts the sum
    to the hard set; `log_eps` > 0 replaces the student's log p_q by log(p_q + eps) (official).
    """
    teacher_logp = jax.lax.stop_gradient(logp) if stop_teacher else logp
    teacher_p = jnp.exp(teacher_logp)
    student_logp = jnp.log(jnp.exp(logp) + log_eps) if log_eps > 0 else logp
    # diff[k, q] = log p_k - log p_q  -> [K, K, B, C]; the diagonal k == q is zero for eps = 0
    # and is removed explicitly so that eps > 0 does not leak a self term.
    terms = teacher_p[:, None] * (teacher_logp[:, None] - student_logp[None, :])
    if support is not None:
        terms = jnp.where(support, terms, 0.0)
    k = logp.shape[0]
    off_diagonal = 1.0 - jnp.eye(k, dtype=terms.dtype)
    per_pair = jnp.mean(jnp.sum(terms, axis=-1), axis=-1)  # [K, K]
    return jnp.sum(per_pair * off_diagonal)


def distill_normaliser(num_experts: int, mode: str) -> float:
    """1/(K(K-1)) (Eqs. 8-9) or the official 1/(K-1); 0 for a single expert (no partner)."""
    if num_experts < 2:
        return 0.0
    return 1.0 / (num_experts * (num_experts - 1)) if mode == "pairs" else 1.0 / (num_experts - 1)


def nbod_all(balanced, *, norm: str, log_eps: float = 0.0, stop_teacher: bool = False):
    """Eq. 8: balanced online distillation over all classes. balanced [K, B, C]."""
    logp = jax.nn.log_softmax(balanced, axis=-1)
    scale = distill_normaliser(balanced.shape[0], norm)
    return scale * pairwise_kl(logp, log_eps=log_eps, stop_teacher=stop_teacher)


def nbod_hard(
    hard_logp,
    mask,
    *,
    norm: str,
    restricted: bool,
    log_eps: float = 0.0,
    stop_teacher: bool = False,
):
    """Eq. 9: distillation over the shared hard set. hard_logp [K, B, C], mask [B, C].

    With restricted probabilities the KL runs over Psi only; in the official masked-logit form
    the softmax (and hence the KL) still covers all C classes.
    """
    scale = distill_normaliser(hard_logp.shape[0], norm)
    support = mask if restricted else None
    return scale * pairwise_kl(
        hard_logp, support=support, log_eps=log_eps, stop_teacher=stop_teacher
    )


# ----------------------------------------------------------------------------- Eq. 12 (sup. part)


def ncl_supervised_loss(logits, labels, class_counts, *, options: LossOptions, anchor_expert=0):
    """L_nil + lambda * L_dis (Eqs. 5-10, 12 without L_con), paper or official form.

    logits float[K, B, C] raw; labels int[B]; class_counts float[C] (> 0); anchor_expert =
    expert index (int or traced scalar) whose raw logits mine the shared hard set.
    Returns (loss, aux) with aux = nil_all, nil_hard, nbod_all, nbod_hard (before weights).
    Raises ValueError for bad shapes, counts or num_hard (validate_loss_inputs).
    """
    opts = options
    num_hard = opts.num_hard
    validate_loss_inputs(logits, labels, class_counts, num_hard)
    k = logits.shape[0]
    raw = logits.astype(jnp.float32)
    balanced = balanced_logits(logits, class_counts)
    nil_logits = balanced if opts.balanced else raw
    distill_logits = balanced if opts.balanced and opts.distill_balanced else raw
    anchor_mask = hard_category_mask(jnp.take(logits, anchor_expert, axis=0), labels, num_hard)

    if opts.nil_hard_set == "per_expert":
        nil_masks = jax.vmap(hard_category_mask, in_axes=(0, None, None))(logits, labels, num_hard)
    else:
        nil_masks = jnp.broadcast_to(anchor_mask, (k,) + anchor_mask.shape)
    nil_hard_logp = hard_log_probs(nil_logits, nil_masks, opts.hard_probs)
    anchor_hard_logp = hard_log_probs(distill_logits, anchor_mask, opts.hard_probs)

    kl_kwargs = dict(
        norm=opts.distill_norm,
        log_eps=opts.distill_log_eps,
        stop_teacher=opts.teacher_stop_gradient,
    )
    aux = {
        "nil_all": nil_all(nil_logits, labels),
        "nil_hard": nil_hard(nil_hard_logp, labels),
        "nbod_all": nbod_all(distill_logits, **kl_kwargs),
        "nbod_hard": nbod_hard(
            anchor_hard_logp, anchor_mask, restricted=opts.hard_probs == "restricted", **kl_kwargs
        ),
    }
    loss = (
        aux["nil_all"]
        + opts.nil_hard_weight * aux["nil_hard"]
        + opts.distill_weight * aux["nbod_all"]
        + opts.hard_distill_weight * aux["nbod_hard"]
    )
    return loss, aux


# ----------------------------------------------------------------------------- Eq. 11 (MoCo)


def l2_normalize(x, axis: int = -1, eps: float = 1e-12):
    """x / max(||x||, eps), as torch.nn.functional.normalize."""
    norm = jnp.linalg.norm(x, axis=axis, keepdims=True)
    return x / jnp.maximum(norm, eps)


def moco_loss(queries, keys, queue, *, temperature: float):
    """Eq. 11 summed over experts: InfoNCE with the own key as positive, the queue as negatives.

    queries, keys float[K, B, D] (not yet normalised); queue float[K, N, D] (normalised).
    Mean over the batch, sum over the K experts. Keys are not detached here: the train step
    computes them from the EMA encoder outside the differentiated function.
    """
    if queries.ndim != 3 or keys.shape != queries.shape:
        raise ValueError(
            f"queries and keys must both be [K, B, D]; got {tuple(queries.shape)} and "
            f"{tuple(keys.shape)}."
        )
    if queue.ndim != 3 or queue.shape[0] != queries.shape[0] or queue.shape[2] != queries.shape[2]:
        raise ValueError(f"queue must be [K, N, D] matching queries; got {tuple(queue.shape)}.")
    q = l2_normalize(queries.astype(jnp.float32))
    k = l2_normalize(keys.astype(jnp.float32))
    positive = jnp.sum(q * k, axis=-1, keepdims=True)  # [K, B, 1]
    negative = jnp.einsum("kbd,knd->kbn", q, queue.astype(jnp.float32))  # [K, B, N]
    logits = jnp.concatenate([positive, negative], axis=-1) / temperature
    per_expert = -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[..., 0], axis=-1)
    return jnp.sum(per_expert)
