"""One prepared accelerator check: the NCL train step over a grid of shapes, in one command.

Why: an accelerator is lent to this project rarely and briefly (one H200, ~15 minutes,
everything included), so what it should measure is prepared here, tested on the CPU, and run
there as one command that ends in time and never imports TensorFlow (the device image has
none). It writes OUT_DIR/device_check.json and the same as a Markdown table,
OUT_DIR/device_check.md, after every row, so a run cut short still leaves its rows.

What it measures, per row (`ncl_jax.perf.benchmark.time_step`: the real pmapped train step with
all K experts, the NCL loss, SGD and, with MoCo, the key encoders, EMA and queue, on
synthetic batches): ms per step (median of the repeats), images/s, compile time (s), peak
host RSS and peak device memory (MiB; the process-wide high-water mark, so a row that did
not raise it is shown as "<= X"), and XLA's per-device memory estimate of the compiled step.

Grids (`--grid`; `auto` = `full` on GPU/TPU, `reduced` on a CPU-only host): see
`ncl_jax.perf.device_grid`. Before each row the time it would take is estimated (the slowest
measured row of the same network, K and MoCo; else of the network; else a default); a row
that would end past `--budget_s` (default 420 s on the full grid, 120 s on the reduced one,
counted from the start of the program) is recorded as `skipped`, and the trimmed rows are
listed.

A row that runs out of device memory (XLA's RESOURCE_EXHAUSTED / "out of memory") is
recorded as `oom` with the largest batch of the same configuration that did fit: a smaller
batch measured in this run, else the first halving whose compiled step XLA estimates to fit
the device's `bytes_limit` (`ncl_jax.perf.memory_fit`). Training (`ncl_jax.main`) reports its own
out-of-memory the same way, as one `error:` line.

It also projects the wall time of the 400-epoch CIFAR-100-LT and 200-epoch ImageNet-LT
recipes (step time only) and states which expert strategy `auto` should pick on this
platform: see `ncl_jax.perf.device_report`. Before the grid it times the device pipeline end
to end on the CIFAR-10-LT IF 100 paper row (`ncl_jax.perf.device_epoch`: input alone, input +
step, and the row's projected wall time), the number `launch/paper_cifar_device.sh` needs.

Bad input is one `error:` line with exit status 2, before anything is written: an unknown
strategy or dtype (`--strategies`, `--dtypes`; validated as ncl_jax.config.validation does for
training), an OUT_DIR that already holds a device_check.json (unless `--overwrite`), an
OUT_DIR that cannot be created or written.

Running it on the lent accelerator (Python 3.12, jax 0.11 with CUDA; no TensorFlow, clu or
ml_collections, no network). ml_collections is pure Python: launch/device_check.sh puts the
wheels of .device_wheels/ on PYTHONPATH when `import ml_collections` fails (Python imports a
pure wheel as a zip file). Prepare it once, here, in the repository root:

  .venv/bin/pip download --no-deps -d .device_wheels ml-collections==1.1.0

then, before spending device time, run the reduced grid here (about a minute on two cores):

  bash launch/device_check.sh /tmp/device_check --overwrite

and give the device `run` tool this command, with carry=[".device_wheels"] (the folder is
git-ignored, so only carry brings it along) and timeout_s=480 (8 minutes: the 420 s budget,
JAX start-up, the last row's overshoot; rows are written as they finish, so a run cut off by
the timeout still returns them):

  NCL_REQUIRE_PLATFORM=gpu bash launch/device_check.sh "$OUT" --grid=auto

NCL_REQUIRE_PLATFORM=gpu stops at once, with one `error:` line, if JAX finds no GPU
(instead of timing the reduced grid on the device's CPU). `--list` prints the ordered grid
without running it.

The program: `python -m ncl_jax.device_check` (ncl_jax/device_check.py).
"""

from __future__ import annotations

import dataclasses
import gc
import itertools
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

from ncl_jax.config.validation import validate_config
from ncl_jax.errors import ConfigError
from ncl_jax.models.experts import FAST_COMPILE_OPTIONS
from ncl_jax.perf import benchmark, device_epoch
from ncl_jax.perf.device_grid import FAMILIES, Grid, Spec, build_config, make_grid
from ncl_jax.perf.device_report import (
    JSON_NAME,
    markdown,
    metadata,
    pipeline_summary,
    summarize,
    write_outputs,
)
from ncl_jax.perf.memory_fit import (
    Fit,
    device_bytes_limit,
    fitting_batch_size,
    is_out_of_memory,
    step_memory_bytes,
)
from ncl_jax.training import host_devices

FULL_BUDGET_S, REDUCED_BUDGET_S = 420.0, 120.0
_WATCHED_MODULES = ("tensorflow", "tensorflow_datasets", "clu", "ml_collections")


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


# ------------------------------------------------------------------------------ input checks


def check_values(strategies: Sequence[str], dtypes: Sequence[str]) -> None:
    """ConfigError for an unknown strategy or dtype, with ncl_jax.config.validation's message
    (the one training and the benchmark give)."""

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
        summary["device_pipeline"] = pipeline_summary(pipeline_row)
        summary["meta"]["imported"] = {m: m in sys.modules for m in _WATCHED_MODULES}
        write_outputs(out_dir, summary)
        return summary

    def measure_pipeline() -> dict:
        """The device pipeline row (ncl_jax.perf.device_epoch), first, within the budget."""
        row: dict[str, Any] = {"status": "skipped", "reason": ""}
        estimate = device_epoch.FIRST_ESTIMATE_S[kind]
        used = time.perf_counter() - start
        if used + estimate > budget:
            row["reason"] = f"budget: {used:.0f} s used + ~{estimate:.0f} s > {budget:.0f} s"
            return row
        began = time.perf_counter()
        try:
            row.update(device_epoch.measure(kind), status="ok")
        except Exception as err:  # noqa: BLE001 - the step grid still runs
            row.update(status="oom" if is_out_of_memory(err) else "error", reason=_one_line(err))
        gc.collect()
        row["wall_s"] = round(time.perf_counter() - began, 2)
        print(f"[pipeline] device pipeline end to end: {row['status']}", file=sys.stderr)
        return row

    print(
        f"device check: {kind} grid, {len(grid.specs)} rows, budget {budget:.0f} s, "
        f"{meta['device_kind']} x {meta['device_count']}",
        file=sys.stderr,
        flush=True,
    )
    pipeline_row: dict[str, Any] = {"status": "not reached", "reason": ""}
    write([])
    pipeline_row = measure_pipeline()
    records = run_grid(grid, measure=measure, budget_s=budget, start=start, fit=fit, on_row=write)
    summary = write(records, complete=True)
    print(markdown(summary))
    return summary
