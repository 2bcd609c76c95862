"""The shapes `ncl_jax.device_check` times: network families, rows (`Spec`) and the grids.

Grids (`--grid`; `auto` = `full` on GPU/TPU, `reduced` on a CPU-only host):
- full: ResNet-32 CIFAR-100 (configs/cifar100_lt.py:paper) at batch 64/128/512, K 3/1, MoCo
  on/off, strategy vmap/loop, float32/bfloat16 (48 rows), and ResNet-50 224 px K=3 batch 128
  (configs/imagenet_lt.py:official, no MoCo) in float32/bfloat16 with both strategies. Rows
  are ordered by importance: the CIFAR recipe's shape (batch 64, K=3, MoCo, fp32) with each
  strategy, ResNet-50 fp32 and bf16, then one changed axis at a time (dtype, MoCo, batch, K),
  then two, and so on.
- reduced: the same code paths on tiny networks (ResNet-32 with one block per stage and width
  4 at 8 px; ResNet-50 with one bottleneck per stage and width 4 at 32 px), batch 16 / 8,
  K=2: the main shape with each strategy, ResNet-50 (MoCo off), then one row per changed
  axis (dtype, K). On the CPU it compiles with XLA's fast-compile options, so its times
  check the code path and measure nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from typing import Any

from ncl_jax.config.recipes import checkout_config
from ncl_jax.config.variants import resolve_config
from ncl_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Family:
    """A network and input shape: the config file, variant and (reduced) scale-down."""

    label: str  # as shown in tables
    module: str  # the config file configs/<module>.py
    variant: str  # its config argument
    scale: tuple[tuple[str, Any], ...] = ()  # dotted config overrides that shrink it


FAMILIES = {
    "cifar100": Family("ResNet-32 32px", "cifar100_lt", "paper"),
    "imagenet": Family("ResNet-50 224px", "imagenet_lt", "official"),
    "cifar100_tiny": Family(
        "ResNet-32 d1 w4 8px",
        "cifar100_lt",
        "paper",
        (("model.depth", 1), ("model.width", 4), ("dataset.image_size", 8)),
    ),
    "imagenet_tiny": Family(
        "ResNet-50 d1 w4 32px",
        "imagenet_lt",
        "official",
        (("model.depth", 1), ("model.width", 4), ("dataset.image_size", 32)),
    ),
}


@dataclasses.dataclass(frozen=True)
class Spec:
    """One row of the grid: which train step to time. batch_size is global."""

    family: str
    batch_size: int
    num_experts: int
    moco: bool
    strategy: str
    dtype: str

    @property
    def name(self) -> str:
        dtype = {"float32": "fp32", "bfloat16": "bf16"}.get(self.dtype, self.dtype)
        moco = "moco" if self.moco else "nomoco"
        return (
            f"{self.family}-b{self.batch_size}-k{self.num_experts}-{moco}-{dtype}-{self.strategy}"
        )

    @property
    def shape_key(self) -> tuple:
        """Everything but the batch size: 'the same configuration' for the OOM fallback."""
        return (self.family, self.num_experts, self.moco, self.strategy, self.dtype)


@dataclasses.dataclass(frozen=True)
class Grid:
    """The ordered rows, the main shape per family (for projections and the auto choice),
    and how the rows are timed."""

    kind: str  # "full" | "reduced"
    specs: tuple[Spec, ...]
    mains: dict[str, Spec]  # family -> its recipe's shape (with the first strategy)
    timing: dict[str, dict[str, int]]  # family -> steps, warmup, repeats
    first_estimate_s: dict[str, float]  # family -> guess of a row's wall time, before any


def build_config(spec: Spec):
    """The resolved config of a row: the family's config file and variant, then the row's
    batch, K, MoCo, strategy, dtype and the family's scale-down (its overrides)."""
    family = FAMILIES[spec.family]
    config = checkout_config(family.module, family.variant)
    config.batch_size = spec.batch_size
    config.model.num_experts = spec.num_experts
    config.moco.enabled = spec.moco
    config.model.expert_strategy = spec.strategy
    config.model.dtype = spec.dtype
    for dotted, value in family.scale:
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[leaf] = value
    return resolve_config(config)


def _order(specs: Sequence[Spec], main: Spec, axes: dict[str, Sequence]) -> list[Spec]:
    """Sorts rows by importance: fewer axes changed from `main` first; among those, earlier
    axes of `axes` (strategy, dtype, moco, batch_size, num_experts) first; then by the order
    of each axis's values."""

    def key(spec: Spec):
        changed = tuple(
            i for i, axis in enumerate(axes) if getattr(spec, axis) != getattr(main, axis)
        )
        values = tuple(list(axes[axis]).index(getattr(spec, axis)) for axis in axes)
        return (len(changed), changed, values)

    return sorted(specs, key=key)


def make_grid(
    kind: str,
    *,
    strategies: Sequence[str] = ("vmap", "loop"),
    dtypes: Sequence[str] = ("float32", "bfloat16"),
) -> Grid:
    """The rows of the `full` or `reduced` grid, most important first (module docstring).

    strategies / dtypes: their values in order of importance (the first is the main one).
    The ResNet-50 rows are placed after the CIFAR main shape's strategies (first strategy,
    each dtype), after the one-axis changes (other strategies, first dtype) and after the
    two-axis changes (the rest)."""
    if kind not in ("full", "reduced"):
        raise ConfigError(f"--grid={kind!r} is unknown; use auto, full or reduced.")
    strategies, dtypes = list(dict.fromkeys(strategies)), list(dict.fromkeys(dtypes))
    if kind == "full":
        small, large, batches, large_batch = "cifar100", "imagenet", [64, 128, 512], 128
        timing = {
            small: {"steps": 20, "warmup": 3, "repeats": 3},
            large: {"steps": 10, "warmup": 2, "repeats": 3},
        }
        first = {small: 60.0, large: 120.0}
    else:
        small, large, batches, large_batch = "cifar100_tiny", "imagenet_tiny", [16], 8
        timing = dict.fromkeys((small, large), {"steps": 2, "warmup": 1, "repeats": 1})
        first = {small: 10.0, large: 15.0}
    # The reduced grid leaves MoCo off only in its ResNet-50 row, and uses K=2 (same code
    # paths as K=3, less to compile).
    k = 3 if kind == "full" else 2
    axes = {
        "strategy": strategies,
        "dtype": dtypes,
        "moco": [True, False] if kind == "full" else [True],
        "batch_size": batches,
        "num_experts": [k, 1],
    }
    main = Spec(small, batches[0], k, True, strategies[0], dtypes[0])
    cifar = [Spec(small, b, n, m, s, d) for s, d, m, b, n in itertools.product(*axes.values())]
    cifar = _order(cifar, main, axes)
    if kind == "reduced":  # the main shape and one row per changed axis
        cifar = [s for s in cifar if _changed(s, main, axes) <= 1]
    large_main = Spec(large, large_batch, k, False, strategies[0], dtypes[0])
    large_rows = {
        (s, d): Spec(large, large_batch, k, False, s, d) for s in strategies for d in dtypes
    }
    n_first = len(strategies)  # the main shape with each strategy
    if kind == "reduced":
        specs = cifar[:n_first] + [large_main] + cifar[n_first:]
    else:
        one = [s for s in cifar if _changed(s, main, axes) == 1]
        two = [s for s in cifar if _changed(s, main, axes) == 2]
        rest = [s for s in cifar if _changed(s, main, axes) > 2]
        head = [large_rows[(strategies[0], d)] for d in dtypes]
        after_one = [large_rows[(s, dtypes[0])] for s in strategies[1:]]
        after_two = [large_rows[(s, d)] for s in strategies[1:] for d in dtypes[1:]]
        specs = (
            (cifar[:1] + one[: n_first - 1] + head + one[n_first - 1 :] + after_one + two)
            + after_two
            + rest
        )
    return Grid(kind, tuple(specs), {small: main, large: large_main}, timing, first)


def _changed(spec: Spec, main: Spec, axes) -> int:
    return sum(getattr(spec, axis) != getattr(main, axis) for axis in axes)
