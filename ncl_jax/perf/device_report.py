"""What `ncl_jax.device_check` reports from its measured rows: the projected wall time of the
recipes, the `auto` strategy per platform, the summary JSON and its Markdown table.

It also projects (step time only: no input pipeline, evaluation, checkpoints or compiling)
the wall time of the 400-epoch CIFAR-100-LT recipe (10,847 training images at IF 100, batch
64, paper variant with MoCo; also the official one without) and of the 200-epoch ImageNet-LT
recipe (115,846 images, batch 256, official variant), from the fastest measured strategy of
the recipe's shape: images per run / measured images per second. And it states which expert
strategy `auto` should pick on this platform (the faster of vmap and loop at the recipe's
shape), next to what `ncl_jax.models.resolve_strategy` picks now.
"""

from __future__ import annotations

import datetime
import json
import os
import platform as host_platform
from collections.abc import Sequence
from typing import Any

import jax
import jaxlib

from ncl_jax.cli import command_line
from ncl_jax.config.recipes import checkout_config
from ncl_jax.models import resolve_strategy
from ncl_jax.perf.device_grid import FAMILIES, Grid, make_grid
from ncl_jax.perf.memory_fit import device_bytes_limit

JSON_NAME, MD_NAME = "device_check.json", "device_check.md"
STATUSES = ("ok", "oom", "error", "skipped")  # of a row
COMMAND_ENV = "NCL_DEVICE_CHECK_COMMAND"  # the launcher's own command line, for the record


RECIPES = (
    # name, family, config variant, training images
    ("CIFAR-100-LT IF100, paper (MoCo)", "cifar100", "paper", 10_847),
    ("CIFAR-100-LT IF100, official (no MoCo)", "cifar100", "official", 10_847),
    ("ImageNet-LT, official", "imagenet", "official", 115_846),
)


def recipe_settings(family: str, variant: str) -> dict[str, Any]:
    """Epochs, global batch, K and MoCo of a recipe, read from its config file."""
    module = FAMILIES[family].module
    c = checkout_config(module, variant)
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


def pipeline_summary(row: dict[str, Any]) -> dict[str, Any]:
    """The device pipeline row (ncl_jax.perf.device_epoch) with, when measured, the projected
    wall time of its recipe from its input + step rate (evaluation and checkpoints aside)."""
    out = dict(row)
    if row.get("status") == "ok":
        out["projection"] = projection(
            train_images=row["num_train"],
            epochs=row["epochs"],
            batch_size=row["batch_size"],
            img_per_s=row["input_step_img_per_s"],
        )
    return out


def _pipeline_lines(p: dict[str, Any] | None, reduced: bool) -> list[str]:
    if not p:
        return []
    lines = [
        f"## The device pipeline end to end ({p.get('config', 'configs/cifar10_lt.py:if100')})",
        "",
        "| status | input alone img/s | input + step img/s | steps/epoch | epochs "
        "| projected min | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    proj = p.get("projection") or {}
    projected = None if reduced or "projected_s" not in proj else proj["projected_s"] / 60
    status = p["status"] + (f": {p['reason'][:80]}" if p.get("reason") else "")
    lines.append(
        f"| {status} | {_fmt(p.get('input_img_per_s'), '.0f')} "
        f"| {_fmt(p.get('input_step_img_per_s'), '.0f')} | {proj.get('steps_per_epoch', '-')} "
        f"| {p.get('epochs', '-')} | {_fmt(projected)} | {_fmt(p.get('wall_s'))} |"
    )
    lines += [
        "",
        "A synthetic dataset of the subset's size, read from a prepared cache through "
        "`dataset.pipeline=device` (no TensorFlow), feeds the real train step; the projection "
        "is its steps at the input + step rate (evaluation and checkpoints aside)"
        + ("; the reduced grid's tiny row projects nothing." if reduced else "."),
        "",
    ]
    return lines


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
    lines += _pipeline_lines(summary.get("device_pipeline"), reduced)
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


def _jaxlib_version() -> str:
    try:
        return str(getattr(jaxlib, "__version__", None) or jaxlib.version.__version__)
    except (ImportError, AttributeError):
        return "unknown"


def metadata(grid_kind: str, *, fast_compile: bool) -> dict[str, Any]:
    """Where and how the check ran: date, command, versions, backend, device, flags."""

    device = jax.local_devices()[0]
    command = os.environ.get(COMMAND_ENV) or command_line()
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
