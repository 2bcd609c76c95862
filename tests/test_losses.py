"""NCL losses against an independent float64 numpy re-derivation of the equations.

The reference below is written from the paper (Eqs. 2-12) and from the description of the
official code (docs/design.md), sample by sample with explicit loops, sharing no code with
ncl_jax.core.losses. Gradients are checked against central finite differences of the reference.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncl_jax.core import losses
from tests.tiny import loss_options

# ----------------------------------------------------------------------------- numpy reference


def _log_softmax(v):
    v = np.asarray(v, np.float64)
    m = np.max(v)
    return v - (m + np.log(np.sum(np.exp(v - m))))


def _hard_set(row, label, num_hard):
    """Eq. 3: the num_hard largest non-label entries (ties: lower index first) plus the label."""
    negatives = [j for j in range(len(row)) if j != label]
    negatives.sort(key=lambda j: (-row[j], j))
    return sorted(negatives[:num_hard] + [label])


def _balanced_restricted_logp(z_row, counts, subset):
    """Eq. 4: log of n_j exp(z_j) / sum_{l in subset} n_l exp(z_l), for j in subset."""
    vals = np.array([np.log(counts[j]) + z_row[j] for j in subset])
    return dict(zip(subset, _log_softmax(vals), strict=True))


def paper_reference(z, y, counts, num_hard, lam, lam_hard, anchor):
    z = np.asarray(z, np.float64)
    k_num, b_num, c_num = z.shape
    everything = list(range(c_num))
    nil_all = nil_hard = kl_all = kl_hard = 0.0
    for i in range(b_num):
        full = [_balanced_restricted_logp(z[k, i], counts, everything) for k in range(k_num)]
        shared = _hard_set(z[anchor, i], y[i], num_hard)
        part = [_balanced_restricted_logp(z[k, i], counts, shared) for k in range(k_num)]
        for k in range(k_num):
            nil_all -= full[k][y[i]]
            own = _balanced_restricted_logp(z[k, i], counts, _hard_set(z[k, i], y[i], num_hard))
            nil_hard -= own[y[i]]
        for k, q in itertools.permutations(range(k_num), 2):
            kl_all += sum(np.exp(full[k][j]) * (full[k][j] - full[q][j]) for j in everything)
            kl_hard += sum(np.exp(part[k][j]) * (part[k][j] - part[q][j]) for j in shared)
    pairs = k_num * (k_num - 1)
    nbod_all = kl_all / b_num / pairs if pairs else 0.0
    nbod_hard = kl_hard / b_num / pairs if pairs else 0.0
    aux = dict(
        nil_all=nil_all / b_num, nil_hard=nil_hard / b_num, nbod_all=nbod_all, nbod_hard=nbod_hard
    )
    total = aux["nil_all"] + aux["nil_hard"] + lam * nbod_all + lam_hard * nbod_hard
    return total, aux


def official_reference(z, y, counts, num_hard, lam, lam_hard, anchor=0):
    """Spec s.3.4: CE(b) + CE(b*m) + lam/(K-1) sum_{i!=j} KL(p_j || p_i) on b and on b*m, where
    the mask m takes the top (num_hard + 1) of the anchor's raw logits with the label forced in
    and KL uses log(p_i + 1e-9) on the student side."""
    z = np.asarray(z, np.float64)
    k_num, b_num, c_num = z.shape
    b = z + np.log(np.asarray(counts, np.float64))
    mask = np.zeros((b_num, c_num))
    for i in range(b_num):
        s = z[anchor, i].copy()
        s[y[i]] = 999999.0
        order = sorted(range(c_num), key=lambda j: (-s[j], j))
        mask[i, order[: num_hard + 1]] = 1.0
    h = b * mask

    def ce(v):
        return -np.mean([_log_softmax(v[i])[y[i]] for i in range(b_num)])

    def nbod(v, factor):
        if k_num < 2:
            return 0.0
        p = [np.stack([np.exp(_log_softmax(v[k, i])) for i in range(b_num)]) for k in range(k_num)]
        total = 0.0
        for i, j in itertools.permutations(range(k_num), 2):
            logp_i = np.log(p[i] + 1e-9)
            total += factor * np.sum(p[j] * (np.log(p[j]) - logp_i)) / b_num
        return total / (k_num - 1)

    aux = dict(
        nil_all=sum(ce(b[k]) for k in range(k_num)),
        nil_hard=sum(ce(h[k]) for k in range(k_num)),
        nbod_all=nbod(b, 1.0),
        nbod_hard=nbod(h, 1.0),
    )
    total = aux["nil_all"] + aux["nil_hard"] + lam * aux["nbod_all"] + lam_hard * aux["nbod_hard"]
    return total, aux


def moco_reference(q, k, queue, temperature):
    total = 0.0
    for e in range(q.shape[0]):
        per = []
        for i in range(q.shape[1]):
            qn = q[e, i] / np.linalg.norm(q[e, i])
            kn = k[e, i] / np.linalg.norm(k[e, i])
            logits = np.concatenate([[qn @ kn], queue[e] @ qn]) / temperature
            per.append(-_log_softmax(logits)[0])
        total += np.mean(per)
    return total


def numeric_grad(fn, x, eps=1e-5):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (fn(up) - fn(down)) / (2 * eps)
    return grad


def _inputs(seed=0, k=3, b=5, c=9, scale=2.0):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(k, b, c)) * scale
    y = rng.integers(0, c, size=b)
    counts = rng.integers(1, 5001, size=c).astype(np.float64)
    return z, y, counts


def _jax_loss(z, y, counts, variant, num_hard, anchor, **fields):
    """The loss with the LossOptions of `variant`'s resolved config, `num_hard` and `fields`
    (e.g. distill_weight=0.4, balanced=False) replaced."""
    return losses.ncl_supervised_loss(
        jnp.asarray(z, jnp.float32),
        jnp.asarray(y),
        jnp.asarray(counts, jnp.float32),
        options=loss_options(variant, num_hard=num_hard, **fields),
        anchor_expert=anchor,
    )


REFERENCES = {"paper": paper_reference, "official": official_reference}

# ----------------------------------------------------------------------------- values


@pytest.mark.parametrize("variant", ["paper", "official"])
@pytest.mark.parametrize("anchor", [0, 2])
@pytest.mark.parametrize("seed", [0, 1])
def test_supervised_loss_matches_reference(variant, anchor, seed):
    z, y, counts = _inputs(seed)
    num_hard = 3
    loss, aux = _jax_loss(
        z, y, counts, variant, num_hard, anchor, distill_weight=0.6, hard_distill_weight=0.4
    )
    ref, ref_aux = REFERENCES[variant](z, y, counts, num_hard, 0.6, 0.4, anchor)
    np.testing.assert_allclose(float(loss), ref, rtol=2e-6)
    for name in ("nil_all", "nil_hard", "nbod_all", "nbod_hard"):
        np.testing.assert_allclose(
            float(aux[name]), ref_aux[name], rtol=1e-5, atol=1e-6, err_msg=name
        )


# ----------------------------------------------------------------------------- switches
# Baselines and ablations (Tables 4-5, Fig. 6a): the reference evaluates the same equations
# with counts of 1 (log 1 = 0, i.e. unbalanced softmax) where a switch turns balancing off.


def switch_reference(
    z, y, counts, num_hard, lam, lam_hard, anchor, *, balanced, distill_balanced, nil_hard_weight
):
    ones = np.ones_like(np.asarray(counts, np.float64))
    nil_counts = counts if balanced else ones
    distill_counts = counts if balanced and distill_balanced else ones
    _, nil = paper_reference(z, y, nil_counts, num_hard, lam, lam_hard, anchor)
    _, distill = paper_reference(z, y, distill_counts, num_hard, lam, lam_hard, anchor)
    aux = dict(
        nil_all=nil["nil_all"],
        nil_hard=nil["nil_hard"],
        nbod_all=distill["nbod_all"],
        nbod_hard=distill["nbod_hard"],
    )
    weights = {"nil_all": 1.0, "nil_hard": nil_hard_weight, "nbod_all": lam, "nbod_hard": lam_hard}
    return sum(w * aux[name] for name, w in weights.items()), aux


@pytest.mark.parametrize(
    "balanced, distill_balanced, nil_hard_weight",
    [(False, True, 1.0), (True, False, 1.0), (True, True, 0.0), (False, False, 0.5)],
    ids=["ce", "nod", "no_nil_hard", "ce_half_nil_hard"],
)
def test_loss_switches_match_reference(balanced, distill_balanced, nil_hard_weight):
    z, y, counts = _inputs(4)
    loss, aux = _jax_loss(
        z,
        y,
        counts,
        "paper",
        3,
        1,
        distill_weight=0.6,
        hard_distill_weight=0.4,
        balanced=balanced,
        distill_balanced=distill_balanced,
        nil_hard_weight=nil_hard_weight,
    )
    ref, ref_aux = switch_reference(
        z,
        y,
        counts,
        3,
        0.6,
        0.4,
        1,
        balanced=balanced,
        distill_balanced=distill_balanced,
        nil_hard_weight=nil_hard_weight,
    )
    np.testing.assert_allclose(float(loss), ref, rtol=2e-6)
    for name in ("nil_all", "nil_hard", "nbod_all", "nbod_hard"):
        np.testing.assert_allclose(
            float(aux[name]), ref_aux[name], rtol=1e-5, atol=1e-6, err_msg=name
        )


@pytest.mark.parametrize("balanced", [True, False], ids=["bsce", "ce"])
def test_one_expert_with_every_ncl_term_off_is_exactly_bsce_or_ce(balanced):
    z, y, counts = _inputs(5, k=1)
    loss, _ = _jax_loss(
        z,
        y,
        counts,
        "paper",
        3,
        0,
        distill_weight=0.0,
        hard_distill_weight=0.0,
        balanced=balanced,
        nil_hard_weight=0.0,
    )
    shift = np.log(counts) if balanced else 0.0
    expected = -np.mean([_log_softmax(z[0, i] + shift)[y[i]] for i in range(len(y))])
    np.testing.assert_allclose(float(loss), expected, rtol=2e-6)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_supervised_loss_gradient_matches_reference(variant):
    z, y, counts = _inputs(3, k=3, b=3, c=6)
    num_hard, anchor = 2, 1
    grad = jax.grad(lambda v: _jax_loss(v, y, counts, variant, num_hard, anchor)[0])(
        jnp.asarray(z, jnp.float32)
    )
    ref = numeric_grad(
        lambda v: REFERENCES[variant](v, y, counts, num_hard, 0.6, 0.6, anchor)[0], z
    )
    np.testing.assert_allclose(np.asarray(grad), ref, atol=1e-4, rtol=1e-4)


def test_moco_loss_matches_reference_values_and_gradients():
    rng = np.random.default_rng(7)
    q, k = rng.normal(size=(2, 4, 5)), rng.normal(size=(2, 4, 5))
    queue = rng.normal(size=(2, 6, 5))
    queue /= np.linalg.norm(queue, axis=-1, keepdims=True)
    fn = lambda qq: losses.moco_loss(
        jnp.asarray(qq, jnp.float32),
        jnp.asarray(k, jnp.float32),
        jnp.asarray(queue, jnp.float32),
        temperature=0.2,
    )
    np.testing.assert_allclose(float(fn(q)), moco_reference(q, k, queue, 0.2), rtol=2e-6)
    grad = jax.grad(fn)(jnp.asarray(q, jnp.float32))
    ref = numeric_grad(lambda qq: moco_reference(qq, k, queue, 0.2), q)
    np.testing.assert_allclose(np.asarray(grad), ref, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_single_expert_is_balanced_softmax_without_distillation(variant):
    z, y, counts = _inputs(4, k=1)
    loss, aux = _jax_loss(z, y, counts, variant, 3, 0)
    bsce = -np.mean([_log_softmax(z[0, i] + np.log(counts))[y[i]] for i in range(len(y))])
    np.testing.assert_allclose(float(aux["nil_all"]), bsce, rtol=1e-6)
    assert float(aux["nbod_all"]) == 0.0 and float(aux["nbod_hard"]) == 0.0
    np.testing.assert_allclose(float(loss), bsce + float(aux["nil_hard"]), rtol=1e-6)
    ref, _ = REFERENCES[variant](z, y, counts, 3, 0.6, 0.6, 0)
    np.testing.assert_allclose(float(loss), ref, rtol=2e-6)


def test_all_negatives_hard_makes_paper_hard_terms_equal_full_terms():
    z, y, counts = _inputs(5, c=6)
    _, aux = _jax_loss(z, y, counts, "paper", 5, 0)
    np.testing.assert_allclose(float(aux["nil_hard"]), float(aux["nil_all"]), rtol=1e-6)
    np.testing.assert_allclose(float(aux["nbod_hard"]), float(aux["nbod_all"]), rtol=1e-5)
    ref, _ = official_reference(z, y, counts, 5, 0.6, 0.6)
    np.testing.assert_allclose(float(_jax_loss(z, y, counts, "official", 5, 0)[0]), ref, rtol=2e-6)


def test_ground_truth_already_top_logit_is_kept_once():
    z, y, counts = _inputs(6)
    for i, label in enumerate(y):
        z[:, i, label] = z[:, i].max() + 1.0
    mask = losses.hard_category_mask(jnp.asarray(z[0]), jnp.asarray(y), 3)
    assert np.all(np.asarray(mask).sum(-1) == 4)
    assert np.all(np.asarray(mask)[np.arange(len(y)), y])
    for variant, ref_fn in REFERENCES.items():
        ref, _ = ref_fn(z, y, counts, 3, 0.6, 0.6, 0)
        np.testing.assert_allclose(float(_jax_loss(z, y, counts, variant, 3, 0)[0]), ref, rtol=2e-6)


def test_ties_pick_the_lower_class_index():
    z = np.zeros((2, 2, 6))
    y = np.array([4, 0])
    mask = np.asarray(losses.hard_category_mask(jnp.asarray(z[0]), jnp.asarray(y), 2))
    np.testing.assert_array_equal(mask[0], [1, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(mask[1], [1, 1, 1, 0, 0, 0])
    counts = np.arange(1.0, 7.0)
    for variant, ref_fn in REFERENCES.items():
        ref, _ = ref_fn(z, y, counts, 2, 0.6, 0.6, 0)
        np.testing.assert_allclose(float(_jax_loss(z, y, counts, variant, 2, 0)[0]), ref, rtol=2e-6)


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_huge_logits_give_finite_values_and_gradients(variant):
    z, y, counts = _inputs(8, scale=1e3)
    loss, aux = _jax_loss(z, y, counts, variant, 3, 1)
    grad = jax.grad(lambda v: _jax_loss(v, y, counts, variant, 3, 1)[0])(
        jnp.asarray(z, jnp.float32)
    )
    assert np.isfinite(float(loss)) and all(np.isfinite(float(v)) for v in aux.values())
    assert np.all(np.isfinite(np.asarray(grad)))
    if variant == "paper":  # no log(p + eps) floor: values stay comparable at this scale
        ref, _ = paper_reference(z, y, counts, 3, 0.6, 0.6, 1)
        np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_counts_spanning_one_to_five_thousand():
    z, y, _ = _inputs(9, c=10)
    counts = np.array([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 1], np.float64)
    for variant, ref_fn in REFERENCES.items():
        ref, _ = ref_fn(z, y, counts, 3, 0.6, 0.6, 0)
        np.testing.assert_allclose(float(_jax_loss(z, y, counts, variant, 3, 0)[0]), ref, rtol=2e-6)


def test_random_anchor_can_be_traced():
    z, y, counts = _inputs(10)
    fn = jax.jit(lambda a: _jax_loss(z, y, counts, "paper", 3, a)[0])
    for anchor in range(3):
        ref, _ = paper_reference(z, y, counts, 3, 0.6, 0.6, anchor)
        np.testing.assert_allclose(float(fn(anchor)), ref, rtol=2e-6)


def test_teacher_stop_gradient_option_changes_only_gradients():
    z, y, counts = _inputs(11)
    plain = lambda v: _jax_loss(v, y, counts, "paper", 3, 0)[0]
    stopped = lambda v: _jax_loss(v, y, counts, "paper", 3, 0, teacher_stop_gradient=True)[0]
    zj = jnp.asarray(z, jnp.float32)
    np.testing.assert_allclose(float(plain(zj)), float(stopped(zj)), rtol=1e-6)
    assert not np.allclose(np.asarray(jax.grad(plain)(zj)), np.asarray(jax.grad(stopped)(zj)))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_hard=0), "num_hard=0"),
        (dict(num_hard=9), "num_hard=9"),
        (dict(z=np.zeros((5, 9))), "rank 3"),
        (dict(z=np.zeros((0, 5, 9))), "K=0"),
        (dict(counts=np.array([0.0] + [1.0] * 8)), "class_counts must be > 0"),
        (dict(hard_probs="masked"), "loss.hard_probs='masked' is unknown"),
        (dict(anchor="last"), "loss.anchor='last' is unknown"),
    ],
)
def test_bad_input_raises_before_compiling(kwargs, message):
    z, y, counts = _inputs(0)
    z = kwargs.pop("z", z)
    counts = kwargs.pop("counts", counts)
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        options = loss_options("paper", **{"num_hard": 3, **kwargs})
        losses.ncl_supervised_loss(z, y, counts, options=options)


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant='papr'"):
        loss_options("papr")
