"""torchvision -> Flax weight conversion, .npz round trip, and loading into every expert."""

import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ncl_jax.config import builders
from ncl_jax.errors import ConfigError
from ncl_jax.models import pretrained
from ncl_jax.models.resnet import ResNet
from tests.tiny import class_counts, tiny_config

TINY = (1, 1, 1, 1)
WIDTH = 8


def torchvision_state_dict(seed=0, stage_sizes=TINY, width=WIDTH, groups=1, width_per_group=64):
    """A state dict named and shaped as torchvision's ResNet (written from its structure:
    stem conv1/bn1; layerN.i.conv{1,2,3}/bn{1,2,3}; downsample.0/.1 when stride or channels
    change; fc; BN num_batches_tracked), filled with random values."""
    rng = np.random.default_rng(seed)
    sd = {}

    def conv(name, out_ch, in_ch, k):
        sd[f"{name}.weight"] = rng.normal(size=(out_ch, in_ch, k, k)).astype(np.float32)

    def bn(name, ch):
        sd[f"{name}.weight"] = rng.normal(size=ch).astype(np.float32)
        sd[f"{name}.bias"] = rng.normal(size=ch).astype(np.float32)
        sd[f"{name}.running_mean"] = rng.normal(size=ch).astype(np.float32)
        sd[f"{name}.running_var"] = rng.uniform(0.5, 2.0, size=ch).astype(np.float32)
        sd[f"{name}.num_batches_tracked"] = np.array(100, np.int64)

    conv("conv1", width, 3, 7)
    bn("bn1", width)
    inplanes = width
    for i, blocks in enumerate(stage_sizes):
        planes = width * 2**i
        for b in range(blocks):
            stride = 2 if i > 0 and b == 0 else 1
            mid = int(planes * width_per_group / 64) * groups
            p = f"layer{i + 1}.{b}"
            conv(f"{p}.conv1", mid, inplanes, 1)
            bn(f"{p}.bn1", mid)
            conv(f"{p}.conv2", mid, mid // groups, 3)
            bn(f"{p}.bn2", mid)
            conv(f"{p}.conv3", planes * 4, mid, 1)
            bn(f"{p}.bn3", planes * 4)
            if stride != 1 or inplanes != planes * 4:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{p}.downsample.1", planes * 4)
            inplanes = planes * 4
    sd["fc.weight"] = rng.normal(size=(10, inplanes)).astype(np.float32)
    sd["fc.bias"] = rng.normal(size=10).astype(np.float32)
    return sd


def expected_location(torch_key):
    """(collection, path, transform) where the Flax tree must hold this torch tensor."""
    parts = torch_key.split(".")
    leaf = parts[-1]
    if parts[0].startswith("layer"):
        block = f"{parts[0]}_block{int(parts[1]) + 1}"
        module = (
            parts[2]
            if parts[2] != "downsample"
            else ("downsample_conv" if parts[3] == "0" else "downsample_bn")
        )
        path = (block, module)
    else:
        path = (parts[0],)
    if "conv" in path[-1]:
        return "params", (*path, "kernel"), lambda w: w.transpose(2, 3, 1, 0)
    collection, name = {
        "weight": ("params", "scale"),
        "bias": ("params", "bias"),
        "running_mean": ("batch_stats", "mean"),
        "running_var": ("batch_stats", "var"),
    }[leaf]
    return collection, (*path, name), lambda v: v


def get(tree, path):
    for part in path:
        tree = tree[part]
    return tree


def flax_shapes(model):
    variables = jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x, False),
        jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
    )
    return jax.tree.map(lambda s: s.shape, variables)


@pytest.mark.parametrize("groups,width_per_group", [(1, 64), (2, 8)])
def test_every_tensor_lands_transposed_in_place(groups, width_per_group):
    sd = torchvision_state_dict(groups=groups, width_per_group=width_per_group)
    tree = pretrained.convert_torchvision_resnet(sd, stage_sizes=TINY)
    used = 0
    for key, value in sd.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        collection, path, transform = expected_location(key)
        np.testing.assert_array_equal(get(tree[collection], path), transform(value), err_msg=key)
        used += 1
    assert used == len(jax.tree.leaves(tree))
    model = ResNet(stage_sizes=TINY, width=WIDTH, groups=groups, width_per_group=width_per_group)
    assert jax.tree.map(np.shape, tree) == flax_shapes(model)


def test_npz_round_trip(tmp_path):
    tree = pretrained.convert_torchvision_resnet(torchvision_state_dict(), stage_sizes=TINY)
    path = str(tmp_path / "enc.npz")
    pretrained.save_npz(tree, path)
    loaded = pretrained.load_encoder(path)
    assert jax.tree.structure(loaded) == jax.tree.structure(tree)
    jax.tree.map(np.testing.assert_array_equal, loaded, tree)
    assert os.listdir(tmp_path) == ["enc.npz"]  # no temporary left behind


def _drop(key):
    sd = torchvision_state_dict()
    del sd[key]
    return sd


@pytest.mark.parametrize(
    "sd,key",
    [
        (_drop("layer2.0.bn1.running_var"), "layer2.0.bn1.running_var"),
        (_drop("layer4.0.downsample.0.weight"), "layer4.0.downsample.0.weight"),
        (
            {**torchvision_state_dict(), "layer1.1.conv1.weight": np.zeros((8, 32, 1, 1))},
            "layer1.1.conv1.weight",
        ),
        (
            {**torchvision_state_dict(), "layer3.0.bn2.running_mean": np.zeros(5)},
            "layer3.0.bn2.running_mean",
        ),
        ({**torchvision_state_dict(), "conv1.weight": np.zeros((8, 3, 49))}, "conv1.weight"),
    ],
)
def test_bad_torch_state_dicts(sd, key):
    with pytest.raises(ConfigError, match=key) as err:
        pretrained.convert_torchvision_resnet(sd, stage_sizes=TINY)
    assert "\n" not in str(err.value)


def test_wrong_stage_sizes_fail():
    with pytest.raises(ConfigError, match=r"unexpected key 'layer1\.1\."):
        pretrained.convert_torchvision_resnet(
            torchvision_state_dict(stage_sizes=(2, 1, 1, 1)), stage_sizes=TINY
        )
    with pytest.raises(ConfigError, match=r"lacks 'layer1\.1\."):
        pretrained.convert_torchvision_resnet(torchvision_state_dict(), stage_sizes=(2, 1, 1, 1))


@functools.cache
def _states(tmp_dir, moco=True):
    """(config, step config, plain state, pretrained state, encoder) for the tiny ResNet."""
    config = tiny_config(moco=moco)
    config.model.backbone = "resnet50"
    config.model.depth, config.model.width = 1, WIDTH
    cfg = builders.make_step_config(config, class_counts=class_counts(), steps_per_epoch=4)
    plain = builders.create_state(config, cfg)
    encoder = pretrained.convert_torchvision_resnet(torchvision_state_dict(), stage_sizes=TINY)
    config.model.pretrained_path = os.path.join(tmp_dir, f"enc_{moco}.npz")
    pretrained.save_npz(encoder, config.model.pretrained_path)
    return config, cfg, plain, builders.create_state(config, cfg), encoder


# Without MoCo a second pair of states is built (two more compiles): full suite only.
@pytest.mark.parametrize("moco", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_create_state_loads_every_expert(tmp_path_factory, moco):
    _, _, plain, state, encoder = _states(str(tmp_path_factory.getbasetemp()), moco)
    trees = [("params", "params", "params"), ("batch_stats", "batch_stats", "batch_stats")]
    if moco:
        trees += [
            ("ema_params", "params", "params"),
            ("ema_batch_stats", "batch_stats", "batch_stats"),
        ]
    else:
        assert state.ema_params is None and state.ema_batch_stats is None
    for field, collection, _ in trees:
        got, before = getattr(state, field), getattr(plain, field)
        for k in range(state.num_experts):
            jax.tree.map(
                lambda g, e, k=k: np.testing.assert_array_equal(g[k], e),
                got["encoder"],
                encoder[collection],
            )
        for name in set(before) - {"encoder"}:  # heads / projectors as initialised
            jax.tree.map(np.testing.assert_array_equal, got[name], before[name])
    jax.tree.map(np.testing.assert_array_equal, state.opt_state, plain.opt_state)
    assert jax.tree.structure(state) == jax.tree.structure(plain)


def test_apply_pretrained_shape_mismatch(tmp_path_factory):
    _, _, plain, _, _ = _states(str(tmp_path_factory.getbasetemp()), True)
    wide = pretrained.convert_torchvision_resnet(torchvision_state_dict(width=16), stage_sizes=TINY)
    with pytest.raises(ConfigError, match=r"pretrained 'params/\S+' has shape"):
        pretrained.apply_pretrained(plain, wide)
    deep = pretrained.convert_torchvision_resnet(
        torchvision_state_dict(stage_sizes=(1, 2, 1, 1)), stage_sizes=(1, 2, 1, 1)
    )
    with pytest.raises(ConfigError, match="layer2_block2"):
        pretrained.apply_pretrained(plain, deep)


def test_missing_file_fails_before_compiling(monkeypatch):
    config = tiny_config()
    config.model.backbone = "resnet50"
    config.model.depth, config.model.width = 1, WIDTH
    config.model.pretrained_path = "/nonexistent/enc.npz"
    cfg = builders.make_step_config(config, class_counts=class_counts(), steps_per_epoch=4)

    def no_compile(*args):
        raise AssertionError("compiled before checking the file")

    monkeypatch.setattr(builders, "jit_run_once", no_compile)
    with pytest.raises(ConfigError, match="/nonexistent/enc.npz.*does not exist"):
        builders.create_state(config, cfg)


def test_load_encoder_rejects_torch_named_npz(tmp_path):
    path = str(tmp_path / "torch.npz")
    np.savez(path, **torchvision_state_dict())
    with pytest.raises(ConfigError, match="torch-named"):
        pretrained.load_encoder(path)


def test_convert_file_from_torch_named_npz(tmp_path):
    src, out = str(tmp_path / "torch.npz"), str(tmp_path / "ours.npz")
    sd = torchvision_state_dict()
    np.savez(src, **sd)
    model = ResNet(stage_sizes=TINY, width=WIDTH)
    pretrained.convert_file(src, out, model=model)
    expected = pretrained.convert_torchvision_resnet(sd, stage_sizes=TINY)
    jax.tree.map(np.testing.assert_array_equal, pretrained.load_encoder(out), expected)
    with pytest.raises(ConfigError, match=r"pretrained 'params/\S+' has shape"):
        pretrained.convert_file(src, out, model=ResNet(stage_sizes=TINY, width=16))


def test_pth_without_torch_says_how_to_fix(tmp_path, monkeypatch):
    src = tmp_path / "x.pth"
    src.write_bytes(b"not read")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(ConfigError, match="pip install torch"):
        pretrained.convert_file(
            str(src), str(tmp_path / "y.npz"), model=ResNet(stage_sizes=TINY, width=WIDTH)
        )
