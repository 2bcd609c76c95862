"""The pmapped NCL step: device-count invariance, expert independence, EMA, queue, schedules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncl_jax.config import builders
from ncl_jax.core import optim
from ncl_jax.core.moco import ema_update
from ncl_jax.core.train_step import pmap_train_step, replicate, unreplicate
from ncl_jax.models import apply_stacked
from tests.tiny import class_counts, global_batch, shard, tiny_config

STEPS_PER_EPOCH = 4


@functools.cache
def _setup(variant, num_devices, moco=True, num_experts=3):
    """(config, step config, initial state, pmapped step), compiled once per combination."""
    config = tiny_config(variant, moco=moco, num_experts=num_experts)
    cfg = builders.make_step_config(
        config, class_counts=class_counts(), steps_per_epoch=STEPS_PER_EPOCH
    )
    state = builders.create_state(config, cfg)
    step = pmap_train_step(cfg, donate=False, devices=jax.local_devices()[:num_devices])
    return config, cfg, state, step


def _run(variant, num_devices, num_steps=2, **kwargs):
    config, _, state, step = _setup(variant, num_devices, **kwargs)
    replicated = replicate(state, jax.local_devices()[:num_devices])
    metrics = None
    for i in range(num_steps):
        batch = shard(global_batch(config.batch_size, seed=i), num_devices)
        replicated, metrics = step(replicated, batch)
    return replicated, metrics


def _assert_trees_close(a, b, **tol):
    for (path, x), y in zip(
        jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b), strict=True
    ):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), err_msg=str(path), **tol)


# The official variant compiles a second pair of steps: full suite only (slow tier).
@pytest.mark.parametrize("variant", ["paper", pytest.param("official", marks=pytest.mark.slow)])
def test_eight_devices_equal_one_device_on_the_same_global_batch(variant):
    eight, metrics8 = _run(variant, 8)
    one, metrics1 = _run(variant, 1)
    # unreplicate reads the buffers back; indexing (x[0]) compiles and runs an 8-device
    # program per leaf shape, where XLA:CPU aborted a test worker twice on a loaded machine.
    _assert_trees_close(unreplicate(eight), unreplicate(one), rtol=2e-4, atol=2e-5)
    for name in metrics1:
        if name == "first_nonfinite_step":
            continue
        total8 = np.asarray(metrics8[name]).sum(0)
        total1 = np.asarray(metrics1[name]).sum(0)
        if name == "learning_rate":
            np.testing.assert_allclose(total8[0] / total8[1], total1[0] / total1[1])
        else:
            np.testing.assert_allclose(total8, total1, rtol=1e-4, atol=1e-5, err_msg=name)


def test_replicas_identical_and_every_expert_changes_differently():
    _, _, state0, _ = _setup("paper", 8)
    state, _ = _run("paper", 8, num_steps=1)
    for leaf in jax.tree.leaves(
        (state.params, state.batch_stats, state.ema_params, state.queue, state.opt_state)
    ):
        leaf = np.asarray(leaf)
        assert np.array_equal(leaf, np.broadcast_to(leaf[0], leaf.shape))
    before = state0.params["encoder"]["conv1"]["kernel"]
    after = np.asarray(state.params["encoder"]["conv1"]["kernel"][0])
    deltas = after - np.asarray(before)
    assert all(np.abs(deltas[k]).max() > 0 for k in range(3))
    assert not np.allclose(deltas[0], deltas[1]) and not np.allclose(deltas[1], deltas[2])
    # experts start from different initialisations
    assert not np.allclose(np.asarray(before[0]), np.asarray(before[1]))


@pytest.mark.parametrize("variant", ["paper", pytest.param("official", marks=pytest.mark.slow)])
def test_ema_moves_by_one_minus_momentum_and_queue_holds_gathered_keys(variant):
    config, cfg, state, step = _setup(variant, 8)
    # Make the key encoders differ from the queries so the EMA has something to move.
    state = state.replace(ema_params=jax.tree.map(lambda x: x + 0.5, state.ema_params))
    batch = global_batch(config.batch_size, seed=3)
    new, _ = step(replicate(state), shard(batch, 8))
    new = unreplicate(new)

    m = config.moco.momentum**config.moco.ema_repeats
    expected = jax.tree.map(lambda e, p: e + (1 - m) * (p - e), state.ema_params, state.params)
    if not config.moco.ema_projector:  # official: the key projector is frozen
        expected["projector"] = state.ema_params["projector"]
    _assert_trees_close(new.ema_params, expected, rtol=1e-6, atol=1e-7)

    assert int(new.queue_ptr) == config.batch_size
    key_params = (
        ema_update(
            state.ema_params,
            state.params,
            momentum=cfg.moco.momentum,
            repeats=cfg.moco.ema_repeats,
            include_projector=cfg.moco.ema_projector,
        )
        if cfg.moco.ema_before_keys
        else state.ema_params
    )
    out, _ = apply_stacked(
        cfg.expert.clone(bn_axis_name=None),
        key_params,
        state.ema_batch_stats,
        jnp.asarray(batch["key_image"]),
        train=True,
    )
    keys = np.array(out["projections"])
    keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
    np.testing.assert_allclose(
        np.asarray(new.queue[:, : config.batch_size]), keys, rtol=2e-4, atol=2e-5
    )
    np.testing.assert_array_equal(
        np.asarray(new.queue[:, config.batch_size :]),
        np.asarray(state.queue[:, config.batch_size :]),
    )


def test_queue_pointer_wraps_around():
    config = tiny_config("paper")
    assert (config.moco.queue_size, config.batch_size) == (32, 16)
    state, _ = _run("paper", 8, num_steps=3)
    assert int(state.queue_ptr[0]) == (3 * 16) % 32


def test_without_moco_and_single_expert():
    state, metrics = _run("official", 8, num_steps=1, moco=False, num_experts=1)
    assert state.queue is None and state.ema_params is None
    assert np.asarray(metrics["nbod_all"]).sum(0)[0] == 0.0
    assert np.all(np.isfinite(np.asarray(metrics["loss"])))


@pytest.mark.parametrize(
    "epoch, expected",
    [
        (1, 0.046667),
        (2, 0.06),
        (3, 0.073333),
        (4, 0.086667),
        (5, 0.1),
        (319, 0.1),
        (320, 0.01),
        (359, 0.01),
        (360, 0.001),
        (400, 0.001),
    ],
)
def test_warmup_multistep_schedule_cifar(epoch, expected):
    assert optim.warmup_multistep_lr(epoch, base_lr=0.1) == pytest.approx(expected, abs=1e-6)
    schedule = optim.per_epoch(lambda e: optim.warmup_multistep_lr(e, base_lr=0.1), 10, 400)
    for step in ((epoch - 1) * 10, epoch * 10 - 1):
        assert float(schedule(step)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("epoch, expected", [(1, 0.199988), (100, 0.10005), (200, 0.0001)])
def test_cosine_schedule_imagenet(epoch, expected):
    assert optim.cosine_lr(epoch, base_lr=0.2, num_epochs=200) == pytest.approx(expected, abs=1e-6)


def test_optimizer_matches_torch_sgd_nesterov_with_coupled_decay():
    config = tiny_config()
    tx = optim.make_optimizer(config.optim, lambda step: 0.1)
    theta = jnp.array([1.0, -2.0])
    opt_state = tx.init(theta)
    buf = np.zeros(2)
    ref = np.array([1.0, -2.0])
    for g in ([0.5, 0.25], [-1.0, 2.0], [0.1, 0.1]):
        d = np.array(g) + 2e-4 * ref
        buf = 0.9 * buf + d
        ref = ref - 0.1 * (d + 0.9 * buf)
        updates, opt_state = tx.update(jnp.array(g), opt_state, theta)
        theta = theta + updates
    np.testing.assert_allclose(np.asarray(theta), ref, rtol=1e-6)


def test_logged_learning_rate_is_the_one_the_optimizer_applied():
    """A restored or hand-built state whose optax step count differs from TrainState.step
    logs the rate optax used (its own count), not the one TrainState.step suggests."""
    import optax

    config, cfg, state, step = _setup("paper", 1)
    count = 6 * STEPS_PER_EPOCH  # epoch 7: the full rate; state.step 0 would say warm-up
    state = state.replace(
        opt_state=optax.tree_utils.tree_set(state.opt_state, count=jnp.int32(count))
    )
    _, metrics = step(replicate(state, jax.local_devices()[:1]), shard(global_batch(16), 1))
    total, n = np.asarray(metrics["learning_rate"]).sum(0)
    assert total / n == pytest.approx(float(cfg.lr_schedule(count)))
    assert float(cfg.lr_schedule(count)) != pytest.approx(float(cfg.lr_schedule(0)))


def test_bfloat16_step_keeps_state_loss_and_metrics_in_float32():
    """model.dtype=bfloat16 computes the backbones in bf16 only: params, optimiser state,
    BatchNorm statistics, EMA encoders, MoCo queue, loss and metrics stay float32. Checked on
    the shapes of the whole step (traced under vmap with the pmap axis name, not compiled)."""
    from ncl_jax.core.train_step import AXIS, train_step

    config = tiny_config("paper")
    config.model.dtype = "bfloat16"
    cfg = builders.make_step_config(
        config, class_counts=class_counts(), steps_per_epoch=STEPS_PER_EPOCH
    )
    state = builders.abstract_state(config, cfg)
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), shard(global_batch(16), 2)
    )
    stacked = jax.tree.map(lambda x: jax.ShapeDtypeStruct((2, *x.shape), x.dtype), state)
    step = jax.vmap(functools.partial(train_step, cfg=cfg), axis_name=AXIS)
    new_state, metrics = jax.eval_shape(step, stacked, batch)
    assert cfg.expert.dtype == jnp.bfloat16  # the backbone does compute in bf16
    floats = [
        (jax.tree_util.keystr(path), leaf.dtype)
        for path, leaf in jax.tree_util.tree_flatten_with_path((new_state, metrics))[0]
        if jnp.issubdtype(leaf.dtype, jnp.floating)
    ]
    assert floats and all(dtype == jnp.float32 for _, dtype in floats), [
        f for f in floats if f[1] != jnp.float32
    ]
    names = {name for name, _ in floats}
    for part in ("opt_state", "batch_stats", "ema_params", "queue", "['loss']", "['moco']"):
        assert any(part in name for name in names), part
