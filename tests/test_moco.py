"""MoCo pieces on their own (ncl_jax.core.moco), against numpy; the step-level EMA and queue
behaviour (order, all-gather, wrap-around inside the pmapped step) is in test_train_step.py."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncl_jax.config import builders
from ncl_jax.core import moco
from ncl_jax.models import init_stacked
from ncl_jax.models.experts import jit_run_once
from tests.tiny import IMAGE, tiny_config


def test_ema_update_is_repeated_momentum_and_can_freeze_the_projector():
    ema = {"encoder": np.array([1.0, -2.0]), "projector": np.array([3.0])}
    params = {"encoder": np.array([0.0, 4.0]), "projector": np.array([-1.0])}
    m, r = 0.9, 3
    out = moco.ema_update(ema, params, momentum=m, repeats=r)
    reference = {k: ema[k].copy() for k in ema}
    for _ in range(r):  # r applications of ema <- m ema + (1 - m) params, as the official loop
        reference = {k: m * reference[k] + (1 - m) * params[k] for k in ema}
    for k in ema:
        np.testing.assert_allclose(np.asarray(out[k]), reference[k], rtol=1e-6)
    frozen = moco.ema_update(ema, params, momentum=m, repeats=r, include_projector=False)
    np.testing.assert_array_equal(np.asarray(frozen["projector"]), ema["projector"])
    np.testing.assert_allclose(np.asarray(frozen["encoder"]), reference["encoder"], rtol=1e-6)


def test_enqueue_is_a_ring_buffer():
    queue = np.zeros((2, 6, 3), np.float32)
    keys = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    q, ptr = moco.enqueue(jnp.asarray(queue), jnp.int32(4), jnp.asarray(keys))
    expected = queue.copy()
    expected[:, 4:6] = keys
    np.testing.assert_array_equal(np.asarray(q), expected)
    assert int(ptr) == 0  # (4 + 2) % 6
    q, ptr = moco.enqueue(q, ptr, jnp.asarray(keys + 100))
    expected[:, 0:2] = keys + 100
    np.testing.assert_array_equal(np.asarray(q), expected)
    assert int(ptr) == 2


def test_queues_start_as_unit_vectors_per_expert():
    queue, ptr = moco.init_queues(jax.random.PRNGKey(0), num_experts=3, size=16, dim=8)
    assert queue.shape == (3, 16, 8) and int(ptr) == 0
    np.testing.assert_allclose(np.linalg.norm(np.asarray(queue), axis=-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("key_init", ["copy", "independent"])
def test_key_encoders_are_copies_or_independent(key_init):
    expert = builders.build_expert(tiny_config())
    sample = jnp.zeros((1, IMAGE, IMAGE, 3))

    def init(rng, key_rng):
        variables = init_stacked(expert, 3, rng, sample)
        return variables, moco.init_key_encoders(
            variables, expert=expert, num_experts=3, rng=key_rng, sample=sample, key_init=key_init
        )

    # one quickly compiled init instead of one compile per op
    variables, (ema_params, ema_stats) = jit_run_once(
        init, jax.random.PRNGKey(0), jax.random.PRNGKey(1)
    )
    assert jax.tree.structure(ema_params) == jax.tree.structure(variables["params"])
    assert jax.tree.structure(ema_stats) == jax.tree.structure(variables["batch_stats"])
    same = [
        np.array_equal(np.asarray(a), np.asarray(b))
        for a, b in zip(
            jax.tree.leaves(ema_params), jax.tree.leaves(variables["params"]), strict=True
        )
    ]
    kernels = [
        s for s, leaf in zip(same, jax.tree.leaves(ema_params), strict=True) if leaf.ndim > 2
    ]
    assert all(kernels) if key_init == "copy" else not any(kernels)


def test_unknown_key_init_is_refused():
    with pytest.raises(ValueError, match="moco.key_init='clone'"):
        dataclasses.replace(builders.moco_options(tiny_config()), key_init="clone")
