"""One prepared accelerator check: the NCL train step over a grid of shapes, in one command.

  launch/device_check.sh OUT_DIR [--grid=auto|full|reduced] [--budget_s=420] [--overwrite]
  python -m ncl_jax.device_check --out=OUT_DIR ...        (`ncl-device-check` is the same)

Why: an accelerator is lent to this project rarely and briefly (one H200, ~15 minutes,
everything included), so what it should measure is prepared here, tested on the CPU, and run
there as one command that ends in time and never imports TensorFlow (the device image has
none). It writes OUT_DIR/device_check.json and the same as a Markdown table,
OUT_DIR/device_check.md, after every row, so a run cut short still leaves its rows.

What it measures, per row (`ncl_jax.benchmark.time_step`: the real pmapped train step with
all K experts, the NCL loss, SGD and, with MoCo, the key encoders, EMA and queue, on
synthetic batches): ms per step (median of the repeats), images/s, compile time (s), peak
host RSS and peak device memory (MiB; the process-wide high-water mark, so a row that did
not raise it is shown as "<= X"), and XLA's per-device memory estimate of the compiled step.

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
Before each row the time it would take is estimated (the slowest measured row of the same
network, K and MoCo; else of the network; else a default); a row that would end past
`--budget_s` (default 420 s on the full grid, 120 s on the reduced one, counted from the
start of the program) is recorded as `skipped`, and the trimmed rows are listed.

A row that runs out of device memory (XLA's RESOURCE_EXHAUSTED / "out of memory") is
recorded as `oom` with the largest batch of the same configuration that did fit: a smaller
batch measured in this run, else the first halving whose compiled step XLA estimates to fit
the device's `bytes_limit` (`ncl_jax.memory_fit`). Training (`ncl_jax.main`) reports its own
out-of-memory the same way, as one `error:` line.

It also projects (step time only: no input pipeline, evaluation, checkpoints or compiling)
the wall time of the 400-epoch CIFAR-100-LT recipe (10,847 training images at IF 100, batch
64, paper variant with MoCo; also the official one without) and of the 200-epoch ImageNet-LT
recipe (115,846 images, batch 256, official variant), from the fastest measured strategy of
the recipe's shape: images per run / measured images per second. And it states which expert
strategy `auto` should pick on this platform (the faster of vmap and loop at the recipe's
shape), next to what `ncl_jax.models.resolve_strategy` picks now.

Bad input is one `error:` line with exit status 2, before anything is written: an unknown
strategy or dtype (`--strategies`, `--dtypes`; validated as ncl_jax.config_utils does for
training), an OUT_DIR that already holds a device_check.json (unless `--overwrite`), an
OUT_DIR that cannot be created or written.

Running it on the lent accelerator (Python 3.12, jax 0.11 with CUDA; no TensorFlow, clu or
ml_collections, no network). ml_collections is pure Python: launch/device_check.sh puts the
wheels of .device_wheels/ on PYTHONPATH when `import ml_collections` fails (Python imports a
pure wheel as a zip file). Prepare it once, here, in the repository root:

  .venv/bin/pip download --no-deps -d .device_wheels ml-collections==1.1.0

then, before spending device time, run the reduced grid here (about a minute on two cores):

  bash launch/device_check.sh /tmp/device_check --overwrite

and give the device `run` tool this command, with carry=[".device_wheels"] (not git-ignored,
so it travels with the working tree anyway; naming it keeps that true if it ever is ignored)
and timeout_s=480 (8 minutes: the 420 s budget, JAX start-up, the last row's overshoot; rows
are written as they finish, so a run cut off by the timeout still returns them):

  NCL_REQUIRE_PLATFORM=gpu bash launch/device_check.sh "$OUT" --grid=auto

NCL_REQUIRE_PLATFORM=gpu stops at once, with one `error:` line, if JAX finds no GPU
(instead of timing the reduced grid on the device's CPU). `--list` prints the ordered grid
without running it.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import importlib
import itertools
import json
import os
import platform as host_platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from ncl_jax.errors import ConfigError
from ncl_jax.memory_fit import (
    Fit,
    device_bytes_limit,
    fitting_batch_size,
    is_out_of_memory,
    step_memory_bytes,
)

JSON_NAME, MD_NAME = "device_check.json", "device_check.md"
COMMAND_ENV = "NCL_DEVICE_CHECK_COMMAND"  # the launcher's own command line, for the record
STATUSES = ("ok", "oom", "error", "skipped")
FULL_BUDGET_S, REDUCED_BUDGET_S = 420.0, 120.0
_WATCHED_MODULES = ("tensorflow", "tensorflow_datasets", "clu", "ml_collections")


# ------------------------------------------------------------------------------ grid


@dataclasses.dataclass(frozen=True)
class Family:
    """A network and input shape: the config file, variant and (reduced) scale-down."""

    label: str  # as shown in tables
    module: str  # configs.<module>
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
    """The ml_collections config of a row: the family's config file and variant, then the
    row's batch, K, MoCo, strategy, dtype and the family's scale-down."""
    family = FAMILIES[spec.family]
    config = importlib.import_module(f"configs.{family.module}").get_config(family.variant)
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
    return config


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


# ------------------------------------------------------------------------------ running


def _record(spec: Spec, index: int) -> dict[str, Any]:
    family = FAMILIES[spec.family]
    return {
        "index": index,
        "name": spec.name,
        "family": spec.family,
        "network": family.label,
        "config": f"configs/{family.module}.py:{family.variant}",
        "batch_size": spec.batch_size,
        "num_experts": spec.num_experts,
        "moco": spec.moco,
        "strategy": spec.strategy,
        "dtype": spec.dtype,
        "status": "skipped",
        "reason": "",
    }


def estimate_s(spec: Spec, done: Sequence[dict], first_estimate_s: dict[str, float]) -> float:
    """Seconds a row will take: the slowest finished (ok/oom) row of the same family, K and
    MoCo; else of the same family; else the family's first guess."""
    finished = [r for r in done if r["status"] in ("ok", "oom") and r["family"] == spec.family]
    same = [r for r in finished if (r["num_experts"], r["moco"]) == (spec.num_experts, spec.moco)]
    walls = [r["wall_s"] for r in (same or finished)]
    return max(walls) if walls else first_estimate_s[spec.family]


def run_grid(
    grid: Grid,
    *,
    measure: Callable[[Spec], Any],
    budget_s: float,
    start: float,
    clock: Callable[[], float] = time.perf_counter,
    fit: Callable[[Spec], Fit] | None = None,
    on_row: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Runs the rows in order within the budget; returns one record per row (every row of
    the grid, skipped ones included).

    measure(spec) -> a ncl_jax.benchmark.Row (or a dict of its fields); its out-of-memory
    error makes the row `oom`, any other exception `error` (the run goes on). fit(spec) ->
    Fit: the fallback for an oom row without a smaller measured batch. on_row(records) is
    called after every row (the writer). Times are seconds of `clock` since `start`."""
    records: list[dict] = []
    for index, spec in enumerate(grid.specs):
        record = _record(spec, index)
        estimate = estimate_s(spec, records, grid.first_estimate_s)
        record["estimate_s"] = round(estimate, 1)
        used = clock() - start
        if used + estimate > budget_s:
            record["reason"] = (
                f"budget: {used:.0f} s used + ~{estimate:.0f} s for this row > {budget_s:.0f} s"
            )
            records.append(record)
            continue
        began = clock()
        failure = None
        try:
            row = measure(spec)
        except Exception as err:  # noqa: BLE001 - one broken row must not end the check
            failure = ("oom" if is_out_of_memory(err) else "error", _one_line(err))
        gc.collect()  # the failed step's buffers, held by the traceback until now
        if failure is None:
            fields = row if isinstance(row, dict) else dataclasses.asdict(row)
            fields = {k: v for k, v in fields.items() if k not in ("strategy", "num_experts")}
            record.update(fields, status="ok")
        else:
            record["status"], record["reason"] = failure
        if record["status"] == "oom":
            left_s = budget_s - (clock() - start)
            record.update(_largest_fit(spec, records, fit, left_s, grid.first_estimate_s))
        record["wall_s"] = round(clock() - began, 2)
        records.append(record)
        if on_row is not None:
            on_row(records)
        print(_progress_line(record), file=sys.stderr, flush=True)
    return records


def _largest_fit(spec, records, fit, left_s, first_estimate_s) -> dict[str, Any]:
    """The oom row's fallback: a smaller batch of the same configuration measured in this
    run, else `fit` (it compiles about twice, so only with twice a row's estimate left)."""
    measured = [
        r["batch_size"]
        for r in records
        if r["status"] == "ok"
        and (r["family"], r["num_experts"], r["moco"], r["strategy"], r["dtype"]) == spec.shape_key
        and r["batch_size"] < spec.batch_size
    ]
    if measured:
        return {"largest_fitting_batch": max(measured), "fitting_how": "measured"}
    if fit is None or left_s < 2 * estimate_s(spec, records, first_estimate_s):
        return {"largest_fitting_batch": None, "fitting_how": "not searched (budget)"}
    try:
        found = fit(spec)
    except Exception as err:  # noqa: BLE001 - the estimate is a hint, not the measurement
        return {"largest_fitting_batch": None, "fitting_how": f"error: {_one_line(err)}"}
    return {"largest_fitting_batch": found.batch_size, "fitting_how": found.how}


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return f"{type(err).__name__}: {text[:300]}"


def _progress_line(r: dict) -> str:
    if r["status"] == "ok":
        return f"[{r['index']}] {r['name']}: {r['ms_per_step']:.2f} ms/step, {r['wall_s']:.0f} s"
    return f"[{r['index']}] {r['name']}: {r['status']} {r['reason']}"


# ------------------------------------------------------------------------------ summaries

RECIPES = (
    # name, family, config variant, training images
    ("CIFAR-100-LT IF100, paper (MoCo)", "cifar100", "paper", 10_847),
    ("CIFAR-100-LT IF100, official (no MoCo)", "cifar100", "official", 10_847),
    ("ImageNet-LT, official", "imagenet", "official", 115_846),
)


def recipe_settings(family: str, variant: str) -> dict[str, Any]:
    """Epochs, global batch, K and MoCo of a recipe, read from its config file."""
    module = FAMILIES[family].module
    c = importlib.import_module(f"configs.{module}").get_config(variant)
    return {
        "config": f"configs/{module}.py:{variant}",
        "epochs": int(c.num_epochs),
        "batch_size": int(c.batch_size),
        "num_experts": int(c.model.num_experts),
        "moco": bool(c.moco.enabled),
    }


def projection(*, train_images: int, epochs: int, batch_size: int, img_per_s: float) -> dict:
    """Step-time-only wall time of a recipe: steps/epoch = train_images // batch_size (the
    remainder is dropped, as training does); seconds = epochs * steps/epoch * batch_size /
    img_per_s (the measured row's throughput, whatever its batch size)."""
    steps_per_epoch = train_images // batch_size
    total_steps = epochs * steps_per_epoch
    seconds = total_steps * batch_size / img_per_s
    return {
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "projected_s": round(seconds, 1),
        "projected_h": round(seconds / 3600, 3),
    }


def projections(records: Sequence[dict], grid: Grid) -> list[dict]:
    """One entry per recipe and dtype: the projection from the fastest measured strategy of
    the recipe's shape (K and MoCo of the recipe, the grid's main batch of that network)."""
    out = []
    for name, family, variant, images in RECIPES:
        settings = recipe_settings(family, variant)
        grid_family = family if grid.kind == "full" else f"{family}_tiny"
        main = grid.mains[grid_family]
        k = settings["num_experts"] if grid.kind == "full" else main.num_experts
        for dtype in dict.fromkeys(s.dtype for s in grid.specs):
            entry = {"recipe": name, "train_images": images, "dtype": dtype, **settings}
            rows = [
                r
                for r in records
                if r["status"] == "ok"
                and r["family"] == grid_family
                and r["dtype"] == dtype
                and (r["batch_size"], r["num_experts"], r["moco"])
                == (main.batch_size, k, settings["moco"])
            ]
            if not rows:
                entry["row"] = None
                entry["note"] = "not measured (row skipped, failed or not in this grid)"
                out.append(entry)
                continue
            best = min(rows, key=lambda r: r["ms_per_step"])
            entry.update(
                row=best["name"],
                row_batch_size=best["batch_size"],
                row_ms_per_step=best["ms_per_step"],
                row_img_per_s=best["img_per_s"],
                **projection(
                    train_images=images,
                    epochs=settings["epochs"],
                    batch_size=settings["batch_size"],
                    img_per_s=best["img_per_s"],
                ),
            )
            entry["note"] = "step time only (no input pipeline, evaluation, checkpoints, compile)"
            if best["batch_size"] != settings["batch_size"]:
                entry["note"] += (
                    f"; throughput measured at batch {best['batch_size']}, applied to the "
                    f"recipe's batch {settings['batch_size']}"
                )
            if grid.kind == "reduced":
                entry["note"] += "; reduced grid: scaled-down networks, checks the arithmetic only"
            out.append(entry)
    return out


def auto_choice(records: Sequence[dict], grid: Grid, platform: str) -> list[dict]:
    """Per main shape and dtype: ms/step of each measured strategy, the fastest, and what
    `resolve_strategy('auto', platform)` picks now (agrees: None where that one was not
    measured, e.g. cpu_loop on the CPU)."""
    from ncl_jax.models import resolve_strategy

    current = resolve_strategy("auto", platform)
    out = []
    for family, main in grid.mains.items():
        for dtype in dict.fromkeys(s.dtype for s in grid.specs):
            ms = {
                r["strategy"]: r["ms_per_step"]
                for r in records
                if r["status"] == "ok"
                and r["family"] == family
                and r["dtype"] == dtype
                and (r["batch_size"], r["num_experts"], r["moco"])
                == (main.batch_size, main.num_experts, main.moco)
            }
            fastest = min(ms, key=ms.get) if len(ms) >= 2 else None
            agrees = fastest == current if fastest is not None and current in ms else None
            out.append(
                {
                    "platform": platform,
                    "family": family,
                    "shape": f"b{main.batch_size} K{main.num_experts} "
                    f"{'MoCo' if main.moco else 'no MoCo'} {dtype}",
                    "ms_per_step": ms,
                    "fastest": fastest,
                    "resolve_strategy_auto": current,
                    "agrees": agrees,
                }
            )
    return out


def summarize(records, grid, *, meta, budget_s, elapsed_s, complete) -> dict[str, Any]:
    """The JSON document: metadata, rows, what was trimmed, projections, auto choice."""
    skipped = [r["name"] for r in records if r["status"] == "skipped"]
    not_run = [s.name for s in grid.specs[len(records) :]]
    counts = {s: sum(r["status"] == s for r in records) for s in STATUSES}
    trimmed = {
        "grid_rows": len(grid.specs),
        "skipped_for_budget": skipped,
        "not_reached": not_run,
        "note": (
            f"{len(skipped)} of {len(grid.specs)} rows skipped to stay within the "
            f"{budget_s:.0f} s budget"
            + (f"; {len(not_run)} not reached (run cut short)" if not_run else "")
        ),
    }
    if grid.kind == "reduced":
        full = len(make_grid("full").specs)
        trimmed["note"] += (
            f"; reduced grid: {len(grid.specs)} tiny rows instead of the full grid's {full}"
        )
    platform = meta["backend"]
    return {
        "complete": complete,
        "meta": {**meta, "budget_s": budget_s, "elapsed_s": round(elapsed_s, 1)},
        "counts": counts,
        "trimmed": trimmed,
        "rows": list(records),
        "projections": projections(records, grid),
        "auto_strategy": auto_choice(records, grid, platform),
    }


def _fmt(value, spec: str = ".1f", none: str = "-") -> str:
    return none if value is None else format(value, spec)


def markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown: metadata, the row table, projections, auto choice."""
    m = summary["meta"]
    lines = [
        "# NCL accelerator check (`ncl_jax.device_check`)",
        "",
        f"- date: {m['date']}; {'complete' if summary['complete'] else 'INCOMPLETE (cut short)'}",
        f"- command: `{m['command']}`",
        f"- backend: {m['backend']}, device: {m['device_kind']} x {m['device_count']}; "
        f"jax {m['jax']}, jaxlib {m['jaxlib']}, Python {m['python']}",
        f"- grid: {m['grid']} ({summary['trimmed']['grid_rows']} rows); budget "
        f"{m['budget_s']:.0f} s, elapsed {m['elapsed_s']:.0f} s; "
        + ", ".join(f"{k} {v}" for k, v in summary["counts"].items()),
        f"- trimmed: {summary['trimmed']['note']}",
    ]
    if m.get("fast_compile"):
        lines.append(
            "- compiled with XLA's fast-compile options (CPU, reduced grid): times check the "
            "code path, they are not measurements"
        )
    lines += [
        "",
        "| # | row | network | batch | K | MoCo | strategy | dtype | status | ms/step | img/s "
        "| compile s | peak device MiB | XLA step MiB | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["rows"]:
        peak = _fmt(r.get("peak_device_mb"), ".0f")
        if r.get("peak_device_mb") is not None and not r.get("peak_device_own", True):
            peak = f"<= {peak}"
        status = r["status"]
        if status == "oom":
            status += f" (fits: {r.get('largest_fitting_batch')}, {r.get('fitting_how')})"
        elif status == "error":
            status += f": {r['reason'][:80]}"
        lines.append(
            f"| {r['index']} | {r['name']} | {r['network']} | {r['batch_size']} "
            f"| {r['num_experts']} | {'on' if r['moco'] else 'off'} | {r['strategy']} "
            f"| {r['dtype']} | {status} | {_fmt(r.get('ms_per_step'), '.2f')} "
            f"| {_fmt(r.get('img_per_s'), '.0f')} | {_fmt(r.get('compile_s'))} | {peak} "
            f"| {_fmt(r.get('step_memory_mb'), '.0f')} | {_fmt(r.get('wall_s'))} |"
        )
    lines += [
        "",
        "Peak device MiB is the process-wide high-water mark; `<=` marks a row that did not "
        "raise it. XLA step MiB is the compiled step's own estimate (per device).",
        "",
        "## Projected wall time of the recipes (step time only)",
        "",
        "| recipe | config | epochs | batch | steps/epoch | steps | dtype | row used | img/s "
        "| projected min |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    # Tiny unoptimised networks project nothing: their column stays empty (JSON keeps it).
    reduced = bool(summary["meta"].get("fast_compile"))
    for p in summary["projections"]:
        projected = p["projected_s"] / 60 if "projected_s" in p and not reduced else None
        lines.append(
            f"| {p['recipe']} | {p['config']} | {p['epochs']} | {p['batch_size']} "
            f"| {p.get('steps_per_epoch', '-')} | {p.get('total_steps', '-')} | {p['dtype']} "
            f"| {p['row'] or '-'} | {_fmt(p.get('row_img_per_s'), '.0f')} "
            f"| {_fmt(projected)} |"
        )
    notes = dict.fromkeys(p["note"] for p in summary["projections"])
    if reduced:
        notes = {
            "reduced grid (tiny networks, compiled without optimisation): no projection is "
            "shown; the JSON keeps the arithmetic for the tests": None
        }
    lines += ["", *[f"- {note}" for note in notes], ""]
    lines += [
        "## `auto` expert strategy",
        "",
        "| platform | network | shape | ms/step by strategy | fastest | `auto` now | agrees |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in summary["auto_strategy"]:
        ms = ", ".join(f"{k} {v:.2f}" for k, v in a["ms_per_step"].items()) or "-"
        agrees = {True: "yes", False: "**no**", None: "-"}[a["agrees"]]
        lines.append(
            f"| {a['platform']} | {FAMILIES[a['family']].label} | {a['shape']} | {ms} "
            f"| {a['fastest'] or '-'} | {a['resolve_strategy_auto']} | {agrees} |"
        )
    decided = [a for a in summary["auto_strategy"] if a["fastest"]]
    if decided and summary["meta"].get("fast_compile"):
        lines += [
            "",
            "Compiled without optimisation (reduced CPU grid): these times do not rank the "
            "strategies, so no `auto` choice follows from them.",
        ]
    elif decided:
        a = decided[0]
        at = f"{FAMILIES[a['family']].label} {a['shape']}"
        now = f"`resolve_strategy('auto', '{a['platform']}')` picks {a['resolve_strategy_auto']}"
        if a["agrees"] is None:
            sentence = (
                f"On {a['platform']}, {a['fastest']} was the fastest measured strategy at {at}; "
                f"{now}, which this grid did not measure."
            )
        else:
            sentence = (
                f"On {a['platform']}, `auto` should pick **{a['fastest']}** (fastest at {at}); "
                f"{now} now."
            )
        lines += ["", sentence]
    skipped = summary["trimmed"]["skipped_for_budget"] + summary["trimmed"]["not_reached"]
    if skipped:
        lines += ["", f"Skipped rows: {', '.join(skipped)}."]
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: str, summary: dict[str, Any]) -> None:
    """Writes device_check.json and device_check.md, each atomically (temp file + rename)."""
    for name, text in (
        (JSON_NAME, json.dumps(summary, indent=1, sort_keys=False, default=str) + "\n"),
        (MD_NAME, markdown(summary)),
    ):
        path = os.path.join(out_dir, name)
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)


# ------------------------------------------------------------------------------ input checks


def check_values(strategies: Sequence[str], dtypes: Sequence[str]) -> None:
    """ConfigError for an unknown strategy or dtype, with ncl_jax.config_utils's message
    (the one training and the benchmark give)."""
    from ncl_jax.config_utils import validate_config

    if not strategies or not dtypes:
        raise ConfigError("--strategies and --dtypes need at least one value each.")
    for strategy, dtype in itertools.product(strategies, dtypes):
        validate_config(build_config(Spec("cifar100", 64, 3, True, strategy, dtype)), num_devices=1)


def prepare_out_dir(out_dir: str, *, overwrite: bool) -> None:
    """Refuses an OUT_DIR that holds a device_check.json (unless overwrite) or cannot be
    created or written (ConfigError); creates it otherwise. Writes no result."""
    if not out_dir:
        raise ConfigError("--out is required: the directory for device_check.json and .md.")
    existing = os.path.join(out_dir, JSON_NAME)
    if os.path.exists(existing) and not overwrite:
        raise ConfigError(
            f"{existing} exists; pass --overwrite to replace it or choose another OUT_DIR."
        )
    try:
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".device_check_probe_{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as err:
        raise ConfigError(f"OUT_DIR {out_dir} cannot be created or written: {err}") from None


def _jaxlib_version() -> str:
    try:
        import jaxlib

        return str(getattr(jaxlib, "__version__", None) or jaxlib.version.__version__)
    except (ImportError, AttributeError):
        return "unknown"


def metadata(grid_kind: str, *, fast_compile: bool) -> dict[str, Any]:
    import jax

    device = jax.local_devices()[0]
    command = os.environ.get(COMMAND_ENV) or shlex.join(
        ["python", "-m", "ncl_jax.device_check", *sys.argv[1:]]
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": command,
        "jax": jax.__version__,
        "jaxlib": _jaxlib_version(),
        "python": host_platform.python_version(),
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "bytes_limit": device_bytes_limit(),
        "grid": grid_kind,
        "fast_compile": fast_compile,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "xla_python_client_preallocate": os.environ.get("XLA_PYTHON_CLIENT_PREALLOCATE", ""),
    }


# ------------------------------------------------------------------------------ program


def run(
    *,
    out_dir: str,
    grid_kind: str = "auto",
    budget_s: float = -1.0,
    overwrite: bool = False,
    strategies: Sequence[str] = (),
    dtypes: Sequence[str] = (),
    list_only: bool = False,
    start: float | None = None,
) -> dict[str, Any] | None:
    """The whole check (module docstring); returns the summary (None with list_only)."""
    start = time.perf_counter() if start is None else start
    strategies = list(strategies) or ["vmap", "loop"]
    dtypes = list(dtypes) or ["float32", "bfloat16"]
    if grid_kind not in ("auto", "full", "reduced"):
        raise ConfigError(f"--grid={grid_kind!r} is unknown; use auto, full or reduced.")
    check_values(strategies, dtypes)
    if not list_only and not out_dir:
        prepare_out_dir(out_dir, overwrite=overwrite)  # the clearest error, before JAX starts
    import jax

    from ncl_jax import benchmark, host_devices
    from ncl_jax.config_utils import validate_config
    from ncl_jax.models.experts import FAST_COMPILE_OPTIONS

    backend = jax.default_backend()
    host_devices.check_platform(backend)  # NCL_REQUIRE_PLATFORM=gpu: no silent CPU run
    kind = grid_kind if grid_kind != "auto" else ("reduced" if backend == "cpu" else "full")
    budget = budget_s if budget_s > 0 else (FULL_BUDGET_S if kind == "full" else REDUCED_BUDGET_S)
    grid = make_grid(kind, strategies=strategies, dtypes=dtypes)
    for spec in grid.specs:  # e.g. a batch that does not split over the devices
        validate_config(build_config(spec), num_devices=jax.local_device_count())
    if list_only:
        for i, spec in enumerate(grid.specs):
            print(f"{i:3d} {spec.name}")
        return None
    prepare_out_dir(out_dir, overwrite=overwrite)  # after every input check: nothing made
    fast = backend == "cpu" and kind == "reduced"
    meta = metadata(kind, fast_compile=fast)

    def measure(spec: Spec):
        before = benchmark.device_peak_mb()
        row = benchmark.time_step(
            build_config(spec),
            **grid.timing[spec.family],
            compiler_options=dict(FAST_COMPILE_OPTIONS) if fast else None,
        )
        fields = dataclasses.asdict(row)
        fields["peak_device_own"] = before is None or (row.peak_device_mb or 0.0) > before
        return fields

    def fit(spec: Spec) -> Fit:
        config = build_config(spec)

        def needed(batch: int) -> int | None:
            config.batch_size = batch
            return step_memory_bytes(config)

        return fitting_batch_size(
            spec.batch_size,
            needed_bytes=needed,
            limit_bytes=device_bytes_limit(),
            multiple=jax.local_device_count(),
        )

    def write(records: list[dict], complete: bool = False) -> dict:
        summary = summarize(
            records,
            grid,
            meta=meta,
            budget_s=budget,
            elapsed_s=time.perf_counter() - start,
            complete=complete,
        )
        summary["meta"]["imported"] = {m: m in sys.modules for m in _WATCHED_MODULES}
        write_outputs(out_dir, summary)
        return summary

    print(
        f"device check: {kind} grid, {len(grid.specs)} rows, budget {budget:.0f} s, "
        f"{meta['device_kind']} x {meta['device_count']}",
        file=sys.stderr,
        flush=True,
    )
    write([])
    records = run_grid(grid, measure=measure, budget_s=budget, start=start, fit=fit, on_row=write)
    summary = write(records, complete=True)
    print(markdown(summary))
    return summary


def _define_flags() -> None:
    flags.DEFINE_string("out", None, "Directory for device_check.json and device_check.md.")
    flags.DEFINE_enum(
        "grid",
        "auto",
        ["auto", "full", "reduced"],
        "auto: full on GPU/TPU, reduced (tiny networks, fast compile) on a CPU-only host.",
    )
    flags.DEFINE_float(
        "budget_s",
        -1.0,
        f"Wall-time budget in seconds from the start (<= 0: {FULL_BUDGET_S:.0f} for the full "
        f"grid, {REDUCED_BUDGET_S:.0f} for the reduced one); rows that would end past it are "
        "skipped and listed.",
    )
    flags.DEFINE_bool("overwrite", False, "Replace an existing OUT_DIR/device_check.json.")
    flags.DEFINE_list("strategies", [], "Expert strategies, main first (default: vmap,loop).")
    flags.DEFINE_list("dtypes", [], "Compute dtypes, main first (default: float32,bfloat16).")
    flags.DEFINE_bool("list", False, "Print the ordered grid and exit; writes nothing.")


def main(argv) -> None:
    start = time.perf_counter()
    from ncl_jax.cli import run_cli

    f = flags.FLAGS
    settings = {  # run()'s parameter for each flag
        "out_dir": f.out or "",
        "grid_kind": f.grid,
        "budget_s": f.budget_s,
        "overwrite": f.overwrite,
        "strategies": f.strategies,
        "dtypes": f.dtypes,
        "list_only": f.list,
    }
    run_cli(lambda: run(**settings, start=start))


def cli() -> None:
    """Console script `ncl-device-check`: the same as `python -m ncl_jax.device_check`."""
    from ncl_jax.cli import run_app

    run_app(main, define_flags=_define_flags)


if __name__ == "__main__":
    cli()
