"""What the model of a resolved config costs: parameters, and XLA's FLOP count per image for
one expert, the K-expert ensemble, the MoCo key path and the whole training step.

Nothing is run or compiled: shapes come from `jax.eval_shape`, and FLOPs from XLA's cost
analysis of each function as lowered (`jax.jit(f).lower(abstract args).cost_analysis()`, the
HLO before XLA's optimisations), so a call costs only tracing time. XLA's conventions: a
multiply-add is 2 flops; BatchNorm, ReLU, residual adds, pooling, the loss and the optimiser
count one flop per elementwise op; a convolution counts only the kernel taps that fall inside
its input, so a padded conv counts fewer multiply-adds than the k*k*Cin*Cout*Hout*Wout of
papers' tables (docs/performance.md gives both for the paper's backbones). Flax's
`nn.tabulate(compute_flops=True)` reads the same analysis, but per module call only: the
ensemble, the key path and the train step need the lowering done here.

Every function is lowered with the "vmap" expert strategy: all strategies compute the same
function (tests/test_models.py), and this one lowers fastest and adds none of the CPU
strategies' fusion barriers (which XLA counts as one flop per element).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from ncl_jax.config import builders
from ncl_jax.config.variants import require_resolved
from ncl_jax.core import moco
from ncl_jax.core.train_step import AXIS, StepConfig, train_step
from ncl_jax.models import Expert, apply_stacked, init_stacked

# The keys of `model_cost`'s dict (result.json's "model_cost"; docs/design.md, "Result JSON").
COST_KEYS = (
    "params_expert",  # one expert's trained parameters: backbone, classifier, MoCo projector
    "params_ensemble",  # the K experts' (what the optimiser trains)
    "params_key_encoders",  # MoCo's K key encoders (EMA, not trained by gradient); 0 when off
    "flops_expert_forward",  # one expert classifying one image (BatchNorm running statistics)
    "flops_ensemble_forward",  # the K experts' logits for one image
    "flops_key_forward",  # MoCo's key path per image (K key encoders, training mode); 0 off
    "flops_train_step",  # the whole train step divided by the global batch size
    "batch_size",  # the global batch the per-image step and key-path numbers are taken at
)


def param_count(tree: Any) -> int:
    """Number of scalars in a tree of arrays or ShapeDtypeStructs."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def lowered_flops(fn, *args) -> float | None:
    """XLA's flop count of `fn(*args)` as lowered for the default backend (args may be
    jax.ShapeDtypeStruct); None where the backend reports none."""
    lowered = jax.jit(fn).lower(*args)
    try:
        analysis = lowered.cost_analysis()
    except (NotImplementedError, RuntimeError):  # a backend without cost analysis: no count,
        return None  # rather than a training run that cannot start
    if isinstance(analysis, list | tuple):  # older JAX versions: one dict per device
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get("flops")
    return None if flops is None else float(flops)


def _abstract_images(batch: int, image_shape) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((batch, *image_shape), jnp.float32)


def _abstract_variables(expert: Expert, num_experts: int, image_shape) -> dict:
    rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
    return jax.eval_shape(
        functools.partial(init_stacked, expert, num_experts),
        rng,
        _abstract_images(1, image_shape),
    )


def ensemble_forward_cost(expert: Expert, num_experts: int, image_shape) -> dict:
    """{"params": trained parameters of the K experts, "forward_flops": XLA's flops for their
    logits [K, 1, C] of one image [H, W, 3] in inference mode}. `expert` may carry a MoCo
    projector: it counts in "params", and is left out of the forward (inference does not run
    it). num_experts=1 is one expert."""
    variables = _abstract_variables(expert.clone(bn_axis_name=None), num_experts, image_shape)
    classifier = expert.clone(bn_axis_name=None, projector_dim=0)
    classify = lambda v, x: apply_stacked(
        classifier,
        {k: p for k, p in v["params"].items() if k != "projector"},
        v["batch_stats"],
        x,
        train=False,
        strategy="vmap",
    )[0]["logits"]
    return {
        "params": param_count(variables["params"]),
        "forward_flops": lowered_flops(classify, variables, _abstract_images(1, image_shape)),
    }


def _per_image(flops: float | None, batch: int) -> float | None:
    return None if flops is None else flops / batch


def model_cost(
    config: ml_collections.ConfigDict, *, step_config: StepConfig | None = None
) -> dict[str, float | int | None]:
    """The cost of a resolved config's model as a flat dict of `COST_KEYS` (flops per image,
    XLA's convention: a multiply-add is 2 flops; None where the backend reports no flops).

    The step is `core.train_step.train_step` itself (K experts forward and backward, the NCL
    loss, the optimiser, and with MoCo the key path, EMA and queue), lowered on one device
    for the whole global batch; its optimiser and EMA work is per step, so it is spread over
    `batch_size` images. step_config: the run's (else one is built with uniform class
    counts, which change no shape)."""
    require_resolved(config)
    if step_config is None:
        counts = np.ones(config.dataset.num_classes, np.float32)
        step_config = builders.make_step_config(config, class_counts=counts, steps_per_epoch=1)
    size, k, batch = config.dataset.image_size, config.model.num_experts, config.batch_size
    image_shape = (size, size, 3)
    expert = step_config.expert
    one = ensemble_forward_cost(expert, 1, image_shape)
    ensemble = ensemble_forward_cost(expert, k, image_shape)

    cfg = dataclasses.replace(step_config, strategy="vmap")
    state = builders.abstract_state(config, cfg)
    images = _abstract_images(batch, image_shape)
    train_batch = {"image": images, "label": jax.ShapeDtypeStruct((batch,), jnp.int32)}
    key_flops, key_params = 0.0, 0
    if cfg.moco is not None:
        train_batch["key_image"] = images
        key_cfg = dataclasses.replace(cfg, expert=expert.clone(bn_axis_name=None))
        keys = functools.partial(moco.compute_keys, cfg=key_cfg)
        key_flops = _per_image(lowered_flops(keys, state, images), batch)
        key_params = param_count(state.ema_params)
    # The step's collectives need the 'batch' axis: one device of it, so one call is the whole
    # global batch (the design's guarantee: the update equals one device's on the whole batch).
    mesh = Mesh(np.array(jax.local_devices()[:1]), (AXIS,))
    step = jax.shard_map(
        functools.partial(train_step, cfg=cfg),
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec()),
        out_specs=PartitionSpec(),
        check_vma=False,
    )
    return {
        "params_expert": one["params"],
        "params_ensemble": ensemble["params"],
        "params_key_encoders": key_params,
        "flops_expert_forward": one["forward_flops"],
        "flops_ensemble_forward": ensemble["forward_flops"],
        "flops_key_forward": key_flops,
        "flops_train_step": _per_image(lowered_flops(step, state, train_batch), batch),
        "batch_size": batch,
    }
