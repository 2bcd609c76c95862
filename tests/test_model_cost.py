"""config/model_cost.py against hand counts written here: parameters exactly, and XLA's flops
within bounds on what XLA counts beside the convolutions and dense layers (BatchNorm, ReLU,
residual adds, pooling, the loss, the optimiser), each bound stated where it is used.

XLA counts a convolution's multiply-adds only where the kernel tap falls inside the input
(padding taps are skipped), so the hand count `_valid_taps` counts those; the conventional
count k*k*Cin*Cout*Hout*Wout of papers' tables is checked against the published numbers
(ResNet-32 about 69 M, ResNet-50 4.1 G multiply-adds), which checks the layer lists."""

import jax
import jax.numpy as jnp
import pytest

from ncl_jax.config.model_cost import COST_KEYS, ensemble_forward_cost, lowered_flops, model_cost
from ncl_jax.models import Expert
from tests.tiny import IMAGE, NUM_CLASSES, tiny_config

# A layer: (input height = width, kernel, stride, in channels, out channels, groups); every
# conv pads kernel // 2 on each side, as PyTorch's backbones do.


def _cifar_resnet_layers(width, blocks, size):
    """ResNet-(6*blocks+2) for CIFAR: 3x3 stem, 3 stages of basic blocks (2 convs each),
    option-A shortcuts (no convs)."""
    layers, cin = [(size, 3, 1, 3, width, 1)], width
    for stage, mult in enumerate((1, 2, 4)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            cout = width * mult
            layers.append((size, 3, stride, cin, cout, 1))
            size = (size - 1) // stride + 1
            layers.append((size, 3, 1, cout, cout, 1))
            cin = cout
    return layers


def _resnet50_layers(size=224):
    """torchvision's ResNet-50: 7x7/2 stem, 3x3/2 max pool, bottlenecks (1x1, 3x3 with the
    stride, 1x1 to 4x planes) and a 1x1 projection shortcut where the shape changes."""
    layers, cin = [(size, 7, 2, 3, 64, 1)], 64
    size = size // 4
    for stage, blocks in enumerate((3, 4, 6, 3)):
        planes = 64 * 2**stage
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            out = (size - 1) // stride + 1
            layers += [(size, 1, 1, cin, planes, 1), (size, 3, stride, planes, planes, 1)]
            layers.append((out, 1, 1, planes, 4 * planes, 1))
            if stride != 1 or cin != 4 * planes:
                layers.append((size, 1, stride, cin, 4 * planes, 1))
            cin, size = 4 * planes, out
    return layers


def _out_and_valid_taps(size, kernel, stride):
    """(output size, number of (output position, kernel tap) pairs inside the input) along
    one axis."""
    pad = kernel // 2
    out = (size + 2 * pad - kernel) // stride + 1
    valid = sum(0 <= o * stride - pad + t < size for o in range(out) for t in range(kernel))
    return out, valid


def _hand_count(layers, features, classes):
    """Conv layers then a dense classifier: parameters (conv kernels, BatchNorm scale and bias
    per conv, dense kernel and bias), conventional multiply-adds, multiply-adds over valid taps
    only, and the conv output elements (what elementwise ops run over)."""
    params = features * classes + classes
    conventional = valid = elements = 0
    for size, k, stride, cin, cout, groups in layers:
        params += k * k * cin // groups * cout + 2 * cout
        out, taps = _out_and_valid_taps(size, k, stride)
        conventional += k * k * out * out * cin // groups * cout
        valid += taps * taps * cin // groups * cout
        elements += out * out * cout
    macs = features * classes
    return params, conventional + macs, valid + macs, elements


def test_a_matrix_product_is_two_flops_per_multiply_add_and_no_analysis_is_none(monkeypatch):
    a, b = jax.ShapeDtypeStruct((2, 3), jnp.float32), jax.ShapeDtypeStruct((3, 5), jnp.float32)
    assert lowered_flops(jnp.matmul, a, b) == 2 * 2 * 3 * 5

    def unsupported(self):
        raise NotImplementedError("no cost analysis on this backend")

    monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", unsupported)
    assert lowered_flops(jnp.matmul, a, b) is None


# Forward (inference): BatchNorm with running statistics (subtract, scale, shift), ReLU, the
# residual add and the pooling: at most 6 flops, i.e. 3 multiply-adds, per conv output
# element (measured: 4.5 flops for ResNet-32 and ResNet-50).
FORWARD_EXTRA_MACS_PER_ELEMENT = 3


def _check_forward(macs, valid, elements):
    assert valid <= macs <= valid + FORWARD_EXTRA_MACS_PER_ELEMENT * elements


def test_resnet32_for_cifar_matches_the_hand_count():
    params, conventional, valid, elements = _hand_count(
        _cifar_resnet_layers(16, 5, 32), features=64, classes=10
    )
    assert params == 464_154
    assert conventional == pytest.approx(69e6, rel=0.01)
    cost = ensemble_forward_cost(Expert(backbone="resnet32_cifar", num_classes=10), 1, (32, 32, 3))
    assert cost["params"] == params
    _check_forward(cost["forward_flops"] / 2, valid, elements)


@pytest.mark.slow  # lowering ResNet-50: 3-8 s on the shared 2-core dev VM
def test_resnet50_at_224_matches_the_hand_count():
    params, conventional, valid, elements = _hand_count(
        _resnet50_layers(), features=2048, classes=1000
    )
    assert params == 25_557_032  # torchvision's resnet50
    assert conventional == pytest.approx(4.1e9, rel=0.01)
    cost = ensemble_forward_cost(Expert(backbone="resnet50", num_classes=1000), 1, (224, 224, 3))
    assert cost["params"] == params
    _check_forward(cost["forward_flops"] / 2, valid, elements)


@pytest.fixture(scope="module")
def single():
    """One tiny expert (ResNet-8, width 4, 8x8 images), MoCo off: NCL's single-model step."""
    return model_cost(tiny_config(num_experts=1, moco=False))


@pytest.fixture(scope="module")
def with_moco():
    """Two tiny experts with MoCo (projector 16 -> 16 -> 8)."""
    return model_cost(tiny_config(num_experts=2, moco=True))


def _tiny_layers():
    return _cifar_resnet_layers(4, 1, IMAGE)


@pytest.mark.slow  # lowers a whole train step: 3-14 s on the shared 2-core dev VM
def test_a_single_model_costs_its_hand_count(single):
    params, _, valid, elements = _hand_count(_tiny_layers(), features=16, classes=NUM_CLASSES)
    assert set(single) == set(COST_KEYS)
    assert single["params_expert"] == single["params_ensemble"] == params
    assert single["params_key_encoders"] == 0 and single["flops_key_forward"] == 0
    _check_forward(single["flops_expert_forward"] / 2, valid, elements)
    assert single["flops_ensemble_forward"] == single["flops_expert_forward"]

    # Training: the forward, the weight gradient (one multiply-add per valid tap again) and the
    # input gradient (again, except for the stem, whose input is the image), for the convs and
    # the classifier. Beside them: BatchNorm in training mode forward and backward, ReLU and
    # residual adds both ways, the loss: at most 32 flops per conv output element (measured:
    # 22); the optimiser (weight decay, Nesterov momentum, learning rate): at most 16 flops
    # per parameter per step, spread over the batch.
    _, _, stem, _ = _hand_count(_tiny_layers()[:1], features=0, classes=0)
    train = 3 * valid - stem
    step_macs = single["flops_train_step"] / 2
    optimiser = 16 * params / single["batch_size"] / 2
    assert train <= step_macs <= train + 16 * elements + optimiser


@pytest.mark.slow  # lowers two whole train steps
def test_ensemble_and_moco_key_path_scale_with_the_experts(single, with_moco):
    k = 2
    projector = 16 * 16 + 16 + 16 * 8 + 8
    params, _, valid, elements = _hand_count(_tiny_layers(), features=16, classes=NUM_CLASSES)
    assert with_moco["params_expert"] == params + projector
    assert with_moco["params_ensemble"] == k * with_moco["params_expert"]
    assert with_moco["params_key_encoders"] == with_moco["params_ensemble"]
    # The projector does not run at inference.
    assert with_moco["flops_expert_forward"] == single["flops_expert_forward"]
    assert with_moco["flops_ensemble_forward"] == pytest.approx(
        k * with_moco["flops_expert_forward"], rel=1e-3
    )
    # Keys: K key encoders (backbone and projector, no classifier) in training mode: BatchNorm
    # with batch statistics, ReLU, adds, the EMA: at most 16 flops per conv output element
    # (measured: 8.4).
    key_macs = valid - 16 * NUM_CLASSES + 16 * 16 + 16 * 8
    assert k * key_macs <= with_moco["flops_key_forward"] / 2 <= k * (key_macs + 8 * elements)
    # The step: K single-model steps plus the key path, plus the projectors, NBOD and the MoCo
    # loss (1.5% here).
    parts = k * single["flops_train_step"] + with_moco["flops_key_forward"]
    assert parts <= with_moco["flops_train_step"] <= 1.03 * parts
