"""ImageNet-pretrained torchvision ResNet/ResNeXt weights for the experts (Places-LT).

The official code starts every Places-LT expert from torchvision's `resnet152-b121ed2d.pth`,
copying every key except `fc` into the query backbones AND the MoCo key backbones. Training
reads only a local .npz of our own layout, so that JAX never needs PyTorch; this module
converts once (torch only for reading a .pth):

then `--config.model.pretrained_path=FILE.npz`. A .npz of torch-named arrays is also accepted
as input, so the .pth can be unpacked on any machine that has torch.

The program: `python -m ncl_jax.pretrained` (ncl_jax/pretrained.py).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from ncl_jax.errors import ConfigError
from ncl_jax.models.resnet import GROUPS, STAGE_SIZES, ResNet

_CONVERT_HINT = "python -m ncl_jax.pretrained --torch_checkpoint=X.pth --out=Y.npz"
# torchvision BN names -> (our collection, our leaf name).
_BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def _torch_layout(stage_sizes) -> dict[str, tuple[str, tuple[str, ...], str | None]]:
    """torch key -> (collection, our module path + leaf, torch key of the conv feeding a BN).

    Block 1 of every stage has a projection shortcut (channels x4 or stride 2), the others
    none: the same rule as torchvision and `ncl_jax.models.resnet.Bottleneck`.
    """
    layout: dict[str, tuple[str, tuple[str, ...], str | None]] = {}

    def add(
        torch_conv: str, torch_bn: str, ours_conv: tuple[str, ...], ours_bn: tuple[str, ...]
    ) -> None:
        layout[f"{torch_conv}.weight"] = ("params", (*ours_conv, "kernel"), None)
        for name, (collection, leaf) in _BN_LEAVES.items():
            layout[f"{torch_bn}.{name}"] = (collection, (*ours_bn, leaf), f"{torch_conv}.weight")

    add("conv1", "bn1", ("conv1",), ("bn1",))
    for stage, blocks in enumerate(stage_sizes):
        for block in range(blocks):
            torch_prefix = f"layer{stage + 1}.{block}"
            ours = f"layer{stage + 1}_block{block + 1}"
            for j in (1, 2, 3):
                add(
                    f"{torch_prefix}.conv{j}",
                    f"{torch_prefix}.bn{j}",
                    (ours, f"conv{j}"),
                    (ours, f"bn{j}"),
                )
            if block == 0:
                add(
                    f"{torch_prefix}.downsample.0",
                    f"{torch_prefix}.downsample.1",
                    (ours, "downsample_conv"),
                    (ours, "downsample_bn"),
                )
    return layout


def _ignored(key: str) -> bool:
    return key.endswith("num_batches_tracked") or key.startswith("fc.")


def _set(tree: dict, path: tuple[str, ...], value: np.ndarray) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def convert_torchvision_resnet(state_dict: Mapping[str, Any], *, stage_sizes) -> dict:
    """torchvision ResNet/ResNeXt state dict -> {'params', 'batch_stats'} of our `ResNet`.

    Conv kernels go OIHW -> HWIO (grouped convs too: Flax's grouped kernel is [H, W, I/G, O]),
    BN weight/bias/running stats -> scale/bias/mean/var. `fc.*` and `num_batches_tracked` are
    dropped; any other missing or extra key is an error, so a wrong --arch cannot load partly.
    """
    layout = _torch_layout(tuple(stage_sizes))
    given = {k for k in state_dict if not _ignored(k)}
    missing = [k for k in layout if k not in given]
    if missing:
        raise ConfigError(
            f"torch checkpoint lacks {missing[0]!r} ({len(missing)} keys missing) for a ResNet "
            f"with stage sizes {tuple(stage_sizes)}; pass the --arch the checkpoint was saved "
            "from (e.g. resnet50 vs resnet152)."
        )
    extra = sorted(given - set(layout))
    if extra:
        raise ConfigError(
            f"torch checkpoint has unexpected key {extra[0]!r} ({len(extra)} extra) for a "
            f"ResNet with stage sizes {tuple(stage_sizes)}; pass a plain torchvision ResNet "
            "state dict (no 'module.' prefix) and the --arch it was saved from."
        )
    tree: dict = {"params": {}, "batch_stats": {}}
    for key, (collection, path, conv_key) in layout.items():
        value = np.asarray(state_dict[key], np.float32)
        if conv_key is None:
            if value.ndim != 4:
                raise ConfigError(
                    f"torch key {key!r} has shape {value.shape}, expected a 4-D "
                    "OIHW conv weight; the file is not a torchvision ResNet."
                )
            value = value.transpose(2, 3, 1, 0)
        else:
            channels = np.shape(state_dict[conv_key])[0]
            if value.shape != (channels,):
                raise ConfigError(
                    f"torch key {key!r} has shape {value.shape}, expected ({channels},) to match "
                    f"{conv_key!r}; the file is corrupt or not a torchvision ResNet."
                )
        _set(tree[collection], path, np.ascontiguousarray(value))
    return tree


def _flatten(tree: Mapping) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep="/")


def _unflatten(flat: Mapping[str, Any]) -> dict:
    return traverse_util.unflatten_dict(dict(flat), sep="/")


def save_npz(tree: Mapping, path: str) -> None:
    """Nested dict of arrays -> one .npz with '/'-joined keys (no pickle), written atomically
    so an interrupted conversion never leaves a truncated file under the final name."""
    flat = {k: np.asarray(v) for k, v in _flatten(tree).items()}
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".npz.tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **flat)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _read_npz(path: str, missing_fix: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise ConfigError(f"{path!r} does not exist; {missing_fix}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{path!r} is not a readable .npz ({err}); write it with `{_CONVERT_HINT}`."
        ) from err


def load_encoder(path: str) -> dict:
    """A .npz written by `save_npz` -> {'params', 'batch_stats'} of one encoder."""
    flat = _read_npz(
        path,
        f"set model.pretrained_path to a .npz of converted weights written by `{_CONVERT_HINT}`",
    )
    if any("/" not in k for k in flat):
        raise ConfigError(
            f"{path!r} holds torch-named arrays, not converted weights; convert "
            f"it first: {_CONVERT_HINT.replace('X.pth', path)}."
        )
    tree = _unflatten(flat)
    if set(tree) != {"params", "batch_stats"}:
        raise ConfigError(
            f"{path!r} has top-level groups {sorted(tree)}, expected params and "
            f"batch_stats; write it with `{_CONVERT_HINT}`."
        )
    return tree


def check_encoder_shapes(encoder: Mapping, reference: Mapping, what: str, fix: str) -> None:
    """Same keys and shapes as `reference` (arrays or ShapeDtypeStructs), else a one-line
    error naming the first offending key (params before batch_stats) and `fix`."""
    got, want = _flatten(encoder), _flatten(reference)
    for key in sorted(want, key=lambda k: not k.startswith("params/")):
        if key not in got:
            raise ConfigError(f"pretrained weights lack {key!r} that {what} has; {fix}.")
        shape, expected = tuple(np.shape(got[key])), tuple(want[key].shape)
        if shape != expected:
            raise ConfigError(
                f"pretrained {key!r} has shape {shape} but {what} expects {expected}; {fix}."
            )
    extra = sorted(set(got) - set(want))
    if extra:
        raise ConfigError(f"pretrained weights have {extra[0]!r} that {what} lacks; {fix}.")


def apply_pretrained(state, encoder: Mapping):
    """`state` (a core.state.TrainState) with one encoder written into every expert (leading
    axis K) of params/batch_stats and, when MoCo is on, of ema_params/ema_batch_stats
    (official: key encoders start pretrained too).
    Heads and projectors keep their fresh initialisation; so does the optimiser state, whose
    momentum buffers are zeros that do not depend on the parameter values."""
    if not isinstance(state.params, Mapping) or "encoder" not in state.params:
        raise ConfigError(
            "model.pretrained_path is set but the model has no 'encoder'; unset "
            "it or use an ImageNet backbone."
        )
    reference = {
        "params": state.params["encoder"],
        "batch_stats": state.batch_stats.get("encoder", {}),
    }
    sliced = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), reference)
    check_encoder_shapes(
        encoder,
        sliced,
        "the model.backbone encoder",
        "convert weights of model.backbone's architecture (--arch) and leave "
        "model.depth/model.width at -1",
    )

    def broadcast(tree: Mapping, collection: str) -> Any:
        if tree is None:
            return None
        own = tree["encoder"]
        new = jax.tree.map(
            lambda leaf, value: jnp.array(
                np.broadcast_to(np.asarray(value, leaf.dtype), leaf.shape)
            ),
            own,
            encoder[collection],
        )
        return {**tree, "encoder": new}

    return state.replace(
        params=broadcast(state.params, "params"),
        batch_stats=broadcast(state.batch_stats, "batch_stats"),
        ema_params=broadcast(state.ema_params, "params"),
        ema_batch_stats=broadcast(state.ema_batch_stats, "batch_stats"),
    )


def reference_model(arch: str) -> ResNet:
    """Our ResNet for a torchvision architecture name (full size: width 64)."""
    groups, width_per_group = GROUPS[arch]
    return ResNet(stage_sizes=STAGE_SIZES[arch], groups=groups, width_per_group=width_per_group)


def _load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
    missing_fix = "pass --torch_checkpoint=PATH of torchvision's resnet152-b121ed2d.pth"
    if path.endswith(".npz"):
        return _read_npz(path, missing_fix)
    if not os.path.isfile(path):
        raise ConfigError(f"{path!r} does not exist; {missing_fix}.")
    try:
        import torch  # lazy: optional, only to read a .pth file
    except ImportError as err:
        raise ConfigError(
            "reading a .pth needs PyTorch: `pip install torch` (CPU build, only "
            "for this conversion), or pass a .npz of torch-named arrays."
        ) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a corrupt or non-weights file
        detail = " ".join(str(err).split())[:160]
        raise ConfigError(
            f"torch.load could not read {path!r} ({type(err).__name__}: "
            f"{detail}); pass torchvision's plain state dict .pth."
        ) from err
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise ConfigError(
            f"{path!r} holds a {type(obj).__name__}, not a state dict; save "
            "model.state_dict() of a torchvision ResNet."
        )
    return {
        k: v.detach().cpu().float().numpy()
        for k, v in obj.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point()
    }


def convert_file(src: str, out: str, *, model: ResNet) -> dict:
    """torch checkpoint (.pth, or .npz of torch-named arrays) -> our .npz for `model`,
    shape-checked against the model so a mismatched architecture fails here, not in training."""
    tree = convert_torchvision_resnet(_load_torch_state_dict(src), stage_sizes=model.stage_sizes)
    reference = jax.eval_shape(
        lambda x: model.init(jax.random.PRNGKey(0), x, False),
        jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
    )
    check_encoder_shapes(
        tree,
        reference,
        f"ResNet{tuple(model.stage_sizes)}",
        "pass the --arch the checkpoint was saved from",
    )
    save_npz(tree, out)
    return tree
