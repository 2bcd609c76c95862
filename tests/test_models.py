"""Backbones, heads and stacked experts: sizes, initialisation, and strategy equivalence."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncl_jax.models import STRATEGIES, Expert, apply_stacked, init_stacked, resolve_strategy
from ncl_jax.models.experts import fusion_barrier, jit_run_once
from ncl_jax.models.heads import CosineHead, LinearHead, ProjectionMLP
from ncl_jax.models.resnet import ResNet
from ncl_jax.models.resnet_cifar import BasicBlockA, ResNetCifar
from tests.tiny import config_file


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _abstract_params(module, shape):
    return jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros(shape), False))


def test_resnet32_has_the_official_parameter_count_and_feature():
    variables = _abstract_params(ResNetCifar(), (1, 32, 32, 3))
    assert _count(variables["params"]) == 463_504
    convs = [
        p
        for p in jax.tree_util.tree_leaves_with_path(variables["params"])
        if "conv" in jax.tree_util.keystr(p[0])
    ]
    assert all("kernel" in jax.tree_util.keystr(path) for path, _ in convs)  # bias-free convs
    out = jax.eval_shape(
        lambda: ResNetCifar().apply(
            jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), variables),
            jnp.zeros((2, 32, 32, 3)),
            False,
        )
    )
    assert out.shape == (2, 64)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, 23_508_032),  # torchvision resnet50 (25,557,032) minus its fc
        (dict(stage_sizes=(3, 8, 36, 3)), 58_143_808),  # resnet152
        (dict(groups=32, width_per_group=4), 22_979_904),  # resnext50_32x4d
    ],
)
def test_imagenet_backbones_match_torchvision_sizes(kwargs, expected):
    variables = _abstract_params(ResNet(**kwargs), (1, 64, 64, 3))
    assert _count(variables["params"]) == expected


def test_option_a_shortcut_subsamples_and_zero_pads():
    block = BasicBlockA(planes=8, stride=2)
    x = jax.random.normal(jax.random.PRNGKey(1), (1, 4, 4, 4))
    variables = block.init(jax.random.PRNGKey(0), x, False)
    zero_convs = jax.tree_util.tree_map_with_path(
        lambda p, v: jnp.zeros_like(v) if "conv" in jax.tree_util.keystr(p) else v, variables
    )
    out = block.apply(zero_convs, x, False)  # residual branch is 0: output = relu(shortcut)
    expected = np.zeros((1, 2, 2, 8))
    expected[..., 2:6] = np.maximum(np.asarray(x)[:, ::2, ::2, :], 0)
    np.testing.assert_allclose(np.asarray(out), expected, atol=1e-6)
    assert _count(variables["params"]) == 3 * 3 * 4 * 8 + 3 * 3 * 8 * 8 + 4 * 8  # no projection


def test_kaiming_normal_fan_in_init_of_cifar_convs():
    params = ResNetCifar(width=64).init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)), False)[
        "params"
    ]
    kernel = np.asarray(params["stage2_block2"]["conv1"]["kernel"])  # 3x3x128x128
    fan_in = 3 * 3 * kernel.shape[2]
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.02)
    assert np.abs(kernel).max() > 3 * np.sqrt(2.0 / fan_in)  # untruncated normal


def test_linear_head_uses_torch_default_uniform_init():
    params = LinearHead(1000).init(jax.random.PRNGKey(0), jnp.zeros((1, 64)))["params"]["fc"]
    bound = 1 / 8.0  # U(-1/sqrt(64), 1/sqrt(64)) for weights and bias
    for leaf in (np.asarray(params["kernel"]), np.asarray(params["bias"])):
        assert np.abs(leaf).max() <= bound and np.abs(leaf).max() > 0.99 * bound
        assert leaf.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)


def test_cosine_head_formula_and_zero_bias():
    head = CosineHead(5, scale=16.0)
    x = jax.random.normal(jax.random.PRNGKey(2), (3, 7))
    params = head.init(jax.random.PRNGKey(0), x)["params"]
    assert np.all(np.asarray(params["bias"]) == 0)
    w, xn = np.asarray(params["kernel"]), np.asarray(x)
    expected = (
        16.0
        * (xn / np.linalg.norm(xn, axis=1, keepdims=True))
        @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    )
    np.testing.assert_allclose(np.asarray(head.apply({"params": params}, x)), expected, rtol=1e-5)


def test_projection_mlp_is_linear_relu_linear():
    mlp = ProjectionMLP(4)
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 6))
    p = mlp.init(jax.random.PRNGKey(0), x)["params"]
    h = np.maximum(np.asarray(x) @ np.asarray(p["fc1"]["kernel"]) + np.asarray(p["fc1"]["bias"]), 0)
    expected = h @ np.asarray(p["fc2"]["kernel"]) + np.asarray(p["fc2"]["bias"])
    np.testing.assert_allclose(np.asarray(mlp.apply({"params": p}, x)), expected, rtol=1e-5)


TINY = dict(depth=1, width=4, num_classes=6, projector_dim=5)


@pytest.fixture(scope="module")
def stacked_variables():
    expert = Expert(**TINY)
    variables = jit_run_once(
        lambda r: init_stacked(expert, 3, r, jnp.zeros((1, 8, 8, 3))), jax.random.PRNGKey(0)
    )
    return expert, variables


def test_stacked_layout_has_leading_expert_axis_and_independent_init(stacked_variables):
    _, variables = stacked_variables
    for leaf in jax.tree.leaves(variables):
        assert leaf.shape[0] == 3
    kernel = np.asarray(variables["params"]["encoder"]["conv1"]["kernel"])
    assert not np.allclose(kernel[0], kernel[1]) and not np.allclose(kernel[1], kernel[2])


@functools.cache
def _strategy_run(strategy: str, train: bool):
    """Outputs, new BatchNorm statistics and parameter gradients of the tiny stacked experts."""
    expert = Expert(**TINY)
    variables = jit_run_once(
        lambda r: init_stacked(expert, 3, r, jnp.zeros((1, 8, 8, 3))), jax.random.PRNGKey(0)
    )
    images = jax.random.normal(jax.random.PRNGKey(4), (4, 8, 8, 3))

    def loss(params):
        out, stats = apply_stacked(
            expert, params, variables["batch_stats"], images, train=train, strategy=strategy
        )
        weights = jnp.arange(1.0, 1.0 + out["logits"].size).reshape(out["logits"].shape)
        return jnp.sum(out["logits"] * weights) + jnp.sum(out["projections"] ** 2), (out, stats)

    (_, (out, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(variables["params"])
    return variables, out, stats, grads


# Evaluation mode (train=False) compiles the same graphs again without BatchNorm updates, and
# "loop" (the unrolled reference, which no platform picks by default) compiles every expert
# separately: both full suite only (slow tier). The fast tier compares the two defaults.
@pytest.mark.parametrize("train", [True, pytest.param(False, marks=pytest.mark.slow)])
@pytest.mark.parametrize(
    "strategy",
    [
        pytest.param(s, marks=pytest.mark.slow) if s == "loop" else s
        for s in STRATEGIES
        if s != "vmap"
    ],
)
def test_strategies_give_same_outputs_stats_and_gradients(strategy, train):
    variables, *reference = _strategy_run("vmap", train)
    _, *result = _strategy_run(strategy, train)
    for a, b in zip(jax.tree.leaves(reference), jax.tree.leaves(result), strict=True):
        scale = max(1.0, float(np.abs(np.asarray(b)).max()))  # float32 summation-order noise
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5 * scale)
    if train:  # running statistics moved: BatchNorm really ran in training mode
        moved = jax.tree.map(
            lambda a, b: float(jnp.abs(a - b).max()), result[1], variables["batch_stats"]
        )
        assert min(jax.tree.leaves(moved)) > 0


def test_auto_strategy_per_platform_and_explicit_override():
    assert resolve_strategy("auto", "cpu") == "cpu_loop"
    assert resolve_strategy("auto", "gpu") == "vmap"
    assert resolve_strategy("auto", "tpu") == "vmap"
    assert resolve_strategy("loop", "gpu") == "loop"


@pytest.mark.slow  # compiles a bf16 copy of every graph
def test_bfloat16_experts_keep_float32_outputs_statistics_and_gradients():
    expert = Expert(**TINY, dtype=jnp.bfloat16)
    variables = init_stacked(expert, 2, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    images = jax.random.normal(jax.random.PRNGKey(4), (4, 8, 8, 3))

    def loss(params):
        out, stats = apply_stacked(
            expert, params, variables["batch_stats"], images, train=True, strategy="cpu_loop"
        )
        return jnp.sum(out["logits"]) + jnp.sum(out["projections"]), (out, stats)

    (value, (out, stats)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(
        variables["params"]
    )
    assert value.dtype == jnp.float32 and np.isfinite(float(value))
    for leaf in jax.tree.leaves((out, stats, grads)):
        assert leaf.dtype == jnp.float32
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_fusion_barrier_is_an_exact_identity_with_identity_gradient():
    x = jax.random.normal(jax.random.PRNGKey(5), (3, 4)).astype(jnp.bfloat16)
    y, vjp = jax.vjp(jax.jit(fusion_barrier), x)
    assert y.dtype == jnp.bfloat16 and np.array_equal(np.asarray(y), np.asarray(x))
    assert np.array_equal(np.asarray(vjp(x)[0]), np.asarray(x))
    hlo = jax.jit(fusion_barrier).lower(x).compile().as_text()
    assert "divide" in hlo  # not folded away, so XLA cannot duplicate what feeds it


def test_unknown_backbone_and_strategy_fail_clearly(stacked_variables):
    expert, variables = stacked_variables
    with pytest.raises(ValueError, match="model.backbone='resnet18'"):
        Expert(backbone="resnet18").init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="expert_strategy='scan'"):
        apply_stacked(
            expert,
            variables["params"],
            variables["batch_stats"],
            jnp.zeros((1, 8, 8, 3)),
            train=False,
            strategy="scan",
        )
    with pytest.raises(ValueError, match="num_experts=0"):
        init_stacked(expert, 0, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))


@pytest.mark.parametrize("devices", [1, 4])
def test_unbiased_running_variance_matches_pytorch_numpy_reference(devices):
    """model.bn_unbiased_variance (official preset): running var <- 0.9 var + 0.1 * the
    UNBIASED variance of the whole (synchronised) batch; outputs still use the biased one."""
    from ncl_jax.models.layers import batch_norm

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(8, 3, 3, 2)) * 3 + 1).astype(np.float32)
    bn = batch_norm(True, "batch", jnp.float32, unbiased_variance=True)
    variables = bn.init(jax.random.PRNGKey(0), x)
    old_var = np.array([2.0, 0.5], np.float32)
    variables = {**variables, "batch_stats": {"mean": np.zeros(2), "var": old_var}}

    def step(v, shard):
        return bn.apply(v, shard, mutable=["batch_stats"])

    shards = x.reshape(devices, 8 // devices, 3, 3, 2)
    y, updates = jax.pmap(step, axis_name="batch", in_axes=(None, 0))(variables, shards)
    flat = x.reshape(-1, 2).astype(np.float64)
    np.testing.assert_allclose(
        np.asarray(updates["batch_stats"]["var"][0]),
        0.9 * old_var + 0.1 * flat.var(0, ddof=1),
        rtol=1e-5,
    )
    normalised = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)  # biased, as PyTorch
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 2), normalised, rtol=1e-4, atol=1e-5)
    plain = batch_norm(True, "batch", jnp.float32)  # the default keeps Flax's biased update
    _, biased = jax.pmap(
        lambda v, s: plain.apply(v, s, mutable=["batch_stats"]),
        axis_name="batch",
        in_axes=(None, 0),
    )(variables, shards)
    np.testing.assert_allclose(
        np.asarray(biased["batch_stats"]["var"][0]), 0.9 * old_var + 0.1 * flat.var(0), rtol=1e-5
    )


def test_official_preset_turns_on_the_unbiased_running_variance():
    get_config = lambda arg=None: config_file("cifar100_lt", arg)
    from ncl_jax.config.builders import build_expert
    from ncl_jax.config.variants import resolve_config

    assert build_expert(resolve_config(get_config("official"))).bn_unbiased_variance
    assert not build_expert(resolve_config(get_config("paper"))).bn_unbiased_variance
