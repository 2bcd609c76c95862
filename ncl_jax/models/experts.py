"""K complete experts held as ONE stacked parameter tree, applied by a switchable strategy.

The state layout is the contract: every leaf of `params` / `batch_stats` has a leading axis K,
created by `nn.vmap` with independent initialisation per expert. How the stacked experts are
*applied* is a separate choice, because the fastest way differs by platform:
  "vmap"      nn.vmap over the expert axis: one batched (grouped) convolution per layer for
              all K experts; the GPU/TPU default.
  "loop"      a Python loop over the K slices inside one jit: K ordinary convolutions per
              layer, which XLA:CPU runs far faster than one batched (grouped) convolution.
  "cpu_loop"  "loop", plus every residual block's output made a value XLA:CPU keeps in memory
              (`fusion_barrier`) instead of recomputing the whole chain of earlier blocks
              inside each layout-changing copy of the backward pass. The CPU default.
All strategies compute the same function (tests/test_models.py checks values and gradients);
measured speeds: docs/performance.md, `python -m ncl_jax.benchmark`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from ncl_jax.models.heads import CosineHead, LinearHead, ProjectionMLP
from ncl_jax.models.resnet import GROUPS, STAGE_SIZES, Bottleneck, ResNet
from ncl_jax.models.resnet_cifar import BasicBlockA, ResNetCifar

STRATEGIES = ("vmap", "loop", "cpu_loop")
RESIDUAL_BLOCKS = (BasicBlockA, Bottleneck)
FAST_COMPILE_OPTIONS = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
}
BACKBONES = ("resnet32_cifar",) + tuple(STAGE_SIZES)
CLASSIFIERS = ("linear", "cosine")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}  # model.dtype: compute dtype


class Expert(nn.Module):
    """One expert: backbone + classifier (+ MoCo projector). Returns a dict of outputs."""

    backbone: str = "resnet32_cifar"
    num_classes: int = 100
    depth: int = -1
    width: int = -1
    classifier: str = "linear"
    cos_scale: float = 16.0
    projector_dim: int = 0  # 0: no projector (MoCo off)
    dtype: Any = jnp.float32
    bn_axis_name: str | None = None
    bn_unbiased_variance: bool = False  # PyTorch's running variance (official preset)

    def setup(self):
        if self.backbone == "resnet32_cifar":
            self.encoder = ResNetCifar(
                blocks_per_stage=5 if self.depth <= 0 else self.depth,
                width=16 if self.width <= 0 else self.width,
                dtype=self.dtype,
                bn_axis_name=self.bn_axis_name,
                bn_unbiased_variance=self.bn_unbiased_variance,
            )
        elif self.backbone in STAGE_SIZES:
            groups, width_per_group = GROUPS[self.backbone]
            stages = STAGE_SIZES[self.backbone]
            self.encoder = ResNet(
                stage_sizes=stages if self.depth <= 0 else (self.depth,) * len(stages),
                width=64 if self.width <= 0 else self.width,
                groups=groups,
                width_per_group=width_per_group,
                dtype=self.dtype,
                bn_axis_name=self.bn_axis_name,
                bn_unbiased_variance=self.bn_unbiased_variance,
            )
        else:
            raise ValueError(
                f"model.backbone={self.backbone!r} is unknown; use one of {BACKBONES}."
            )
        if self.classifier == "linear":
            self.head = LinearHead(self.num_classes)
        elif self.classifier == "cosine":
            self.head = CosineHead(self.num_classes, self.cos_scale)
        else:
            raise ValueError(f"model.classifier={self.classifier!r}; use one of {CLASSIFIERS}.")
        self.projector = ProjectionMLP(self.projector_dim) if self.projector_dim > 0 else None

    def __call__(self, x, train: bool = False):
        features = self.encoder(x.astype(self.dtype), train)
        out = {"features": features.astype(jnp.float32), "logits": self.head(features)}
        if self.projector is not None:
            out["projections"] = self.projector(features)
        return out


def stacked(expert: Expert, num_experts: int) -> nn.Module:
    """The nn.vmap'ed expert: variables get a leading axis K, each expert its own init rng."""
    fields = {
        f.name: getattr(expert, f.name)
        for f in dataclasses.fields(expert)
        if f.name not in ("parent", "name")
    }
    return nn.vmap(
        type(expert),
        variable_axes={"params": 0, "batch_stats": 0},
        split_rngs={"params": True},
        in_axes=None,
        out_axes=0,
        axis_size=num_experts,
    )(**fields)


def init_stacked(expert: Expert, num_experts: int, rng, sample_input):
    """Variables {'params', 'batch_stats'} of K independently initialised experts (traceable:
    call it under `jit_run_once`, eager init compiles every op separately)."""
    if num_experts < 1:
        raise ValueError(f"model.num_experts={num_experts}: NCL needs at least one expert.")
    return dict(stacked(expert, num_experts).init(rng, sample_input, False))


def jit_run_once(fn, *args):
    """jit + run a function that runs once (initialisation): skipping LLVM's expensive passes
    cuts its CPU compile time ~20x, and its run time does not matter."""
    compiled = jax.jit(fn).lower(*args).compile(compiler_options=FAST_COMPILE_OPTIONS)
    return compiled(*args)


def num_experts_of(params) -> int:
    return jax.tree.leaves(params)[0].shape[0]


def fusion_barrier(x: jax.Array) -> jax.Array:
    """x, as a value XLA keeps in memory rather than recomputes inside its consumers.

    XLA duplicates cheap elementwise producers into every consumer fusion; along a residual
    stream that recomputes all earlier blocks' BatchNorm/add/ReLU inside each backward
    transpose. A float division counts as expensive, so it is never duplicated; dividing by
    a 1 hidden behind an optimisation barrier (not constant-folded) is exact.
    """
    return x / jax.lax.optimization_barrier(jnp.ones((), x.dtype))


def _barrier_after_blocks(next_fun, args, kwargs, context):
    """Flax method interceptor: `fusion_barrier` on every residual block's output."""
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(context.module, RESIDUAL_BLOCKS):
        return fusion_barrier(out)
    return out


def apply_stacked(
    expert: Expert, params, batch_stats, images, *, train: bool, strategy: str = "loop"
):
    """Runs all K experts on the same images.

    Returns (outputs, new_batch_stats): outputs is a dict of [K, B, ...] arrays; new
    batch_stats is the updated stacked tree when `train` (else the input tree).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"model.expert_strategy={strategy!r}; use one of {STRATEGIES} or 'auto'.")
    if strategy == "cpu_loop":
        with nn.intercept_methods(_barrier_after_blocks):
            return apply_stacked(expert, params, batch_stats, images, train=train, strategy="loop")
    k = num_experts_of(params)
    variables = {"params": params, "batch_stats": batch_stats}
    if strategy == "vmap":
        module = stacked(expert, k)
        # nn.vmap ignores keyword arguments, so `train` must be positional.
        if train:
            out, updates = module.apply(variables, images, True, mutable=["batch_stats"])
            return out, updates["batch_stats"]
        return module.apply(variables, images, False), batch_stats

    outs, stats = [], []
    for i in range(k):
        sliced = jax.tree.map(lambda leaf, i=i: leaf[i], variables)
        if train:
            out, updates = expert.apply(sliced, images, train=True, mutable=["batch_stats"])
            stats.append(updates["batch_stats"])
        else:
            out = expert.apply(sliced, images, train=False)
        outs.append(out)
    stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
    return stack(outs), (stack(stats) if train else batch_stats)


def resolve_strategy(strategy: str, platform: str | None = None) -> str:
    """'auto' -> the measured fastest strategy for the platform: "cpu_loop" on CPU; "vmap"
    elsewhere (one wide kernel per layer; not measured on a GPU or TPU in this project yet)."""
    if strategy != "auto":
        return strategy
    platform = platform or jax.default_backend()
    return "cpu_loop" if platform == "cpu" else "vmap"
