"""A grid of config overrides times seeds, one training run each (`ncl-sweep`).

Axes: every --sweep (FIELD=v1,v2; `A+B=v1,v2` ties two fields to the same value, e.g. both
distillation weights for the paper's lambda), the training seed (--seeds: config.seed,
config.seed + 1, ...) and, separately, the long-tailed subset seed (--subset_seeds, which
changes the training images). Each run is an ordinary workdir,
WORKDIR/<setting>/subset<S>_seed<T>, trained by `python -m ncl_jax.main` in a subprocess, so a
sweep is restartable: finished runs (result.json) are skipped and interrupted ones resume from
their checkpoints. A failed run is recorded in its sweep_status.json and retried next time.
WORKDIR/sweep.json records the grid (not written by --task, so that array tasks never race);
`ncl_jax.report` needs only the runs' own files. Every run's config is resolved and validated
before the first one starts.

The program: `python -m ncl_jax.sweep` (ncl_jax/sweep.py).
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import itertools
import json
import os
import subprocess
import sys
import time

from ncl_jax.config.validation import validate_config
from ncl_jax.config.variants import resolve_config
from ncl_jax.errors import ConfigError
from ncl_jax.training.run_files import write_json_atomically

SWEEP_FILE = "sweep.json"
STATUS_FILE = "sweep_status.json"


@dataclasses.dataclass(frozen=True)
class Axis:
    """One --sweep: the fields it sets (several when tied) and the values, as typed."""

    fields: tuple[str, ...]
    values: tuple


@dataclasses.dataclass(frozen=True)
class Run:
    setting: dict  # field -> value, over every axis
    subset_seed: int
    seed: int
    workdir: str

    def overrides(self) -> list[str]:
        """The `--config.x=v` flags of this run."""
        values = {**self.setting, "seed": self.seed, "dataset.subset_seed": self.subset_seed}
        return [f"--config.{field}={_flag_value(v)}" for field, v in values.items()]


def _flag_value(value) -> str:
    if isinstance(value, tuple | list):
        return "(" + ",".join(str(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _split_values(text: str) -> list[str]:
    """Comma-separated values; commas inside (...) or [...] belong to a tuple value."""
    out, depth, current = [], 0, ""
    for char in text:
        if char in "([":
            depth += 1
        elif char in ")]":
            depth -= 1
        if char == "," and depth == 0:
            out.append(current)
            current = ""
        else:
            current += char
    out.append(current)
    return [v.strip() for v in out if v.strip()]


def _leaf_type(config, dotted: str):
    """The type of a config field (FieldReference types for fields left to the variant);
    ConfigError naming the closest field when it does not exist."""
    node, walked = config, []
    for part in dotted.split("."):
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            here = ".".join(walked)
            close = difflib.get_close_matches(part, keys, n=1)
            hint = f"; did you mean {'.'.join([*walked, close[0]])}?" if close else "."
            raise ConfigError(
                f"--sweep field {dotted} is not a config field"
                f"{f' (no {part!r} in {here})' if here and not close else ''}{hint}"
            )
        walked.append(part)
        field_type = node.get_type(part)  # FieldReference types for fields left to the variant
        node = node[part]
    return field_type


def _parse_value(text: str, field_type, field: str):
    try:
        if field_type is bool:
            lowered = text.lower()
            if lowered not in ("true", "false"):
                raise ValueError(text)
            return lowered == "true"
        if field_type in (tuple, list):
            value = ast.literal_eval(text)
            return tuple(value) if isinstance(value, tuple | list) else (value,)
        if field_type is float:
            return float(text)
        if field_type is int:
            return int(text)
        return text
    except (ValueError, SyntaxError):
        name = getattr(field_type, "__name__", str(field_type))
        raise ConfigError(
            f"--sweep {field}={text!r}: not a valid {name} (the field's type)."
        ) from None


def parse_axes(specs: list[str], config) -> list[Axis]:
    """--sweep specs -> typed axes; ConfigError (one line) for bad input, before any run."""
    axes = []
    for spec in specs:
        if "=" not in spec:
            raise ConfigError(f"--sweep={spec!r}: use FIELD=v1,v2 (or A+B=v1,v2 to tie fields).")
        left, right = spec.split("=", 1)
        fields = tuple(f.strip() for f in left.split("+") if f.strip())
        texts = _split_values(right)
        if not fields or not texts:
            raise ConfigError(f"--sweep={spec!r} has no {'field' if not fields else 'values'}.")
        types = [_leaf_type(config, f) for f in fields]
        values = tuple(
            _parse_value(t, types[0], fields[0]) for t in texts
        )  # tied fields share the first field's type
        for field, field_type in zip(fields[1:], types[1:], strict=True):
            for t in texts:
                _parse_value(t, field_type, field)
        if len(set(values)) != len(values):
            raise ConfigError(f"--sweep={spec!r} repeats a value.")
        axes.append(Axis(fields, values))
    return axes


def setting_name(setting: dict) -> str:
    """A directory name for a setting: field=value pairs joined by '__' ('default' if none)."""
    if not setting:
        return "default"
    parts = []
    for field, value in setting.items():
        shown = _flag_value(value).replace("(", "").replace(")", "").replace(",", "-")
        parts.append(f"{field}={shown}".replace("/", "_"))
    return "__".join(parts)


def plan(config, axes: list[Axis], *, seeds: int, subset_seeds: int, workdir: str) -> list[Run]:
    """Every run of the grid, in a fixed order (settings, then subset seeds, then seeds)."""
    if seeds < 1:
        raise ConfigError(f"--seeds={seeds}: need at least one training seed.")
    subsets = [int(config.dataset.subset_seed)] if subset_seeds < 1 else list(range(subset_seeds))
    runs = []
    for combo in itertools.product(*(axis.values for axis in axes)):
        setting = {f: v for axis, v in zip(axes, combo, strict=True) for f in axis.fields}
        for subset in subsets:
            for i in range(seeds):
                seed = int(config.seed) + i
                path = os.path.join(workdir, setting_name(setting), f"subset{subset}_seed{seed}")
                runs.append(Run(setting, subset, seed, path))
    return runs


def validate_runs(config, runs: list[Run]) -> None:
    """Resolves and validates every run's config before any of them starts."""

    for run in runs:
        candidate = config.copy_and_resolve_references()
        for dotted, value in {
            **run.setting,
            "seed": run.seed,
            "dataset.subset_seed": run.subset_seed,
        }.items():
            *parents, leaf = dotted.split(".")
            node = candidate
            for part in parents:
                node = node[part]
            node[leaf] = value
        try:
            validate_config(resolve_config(candidate), num_devices=1)
        except ConfigError as err:
            raise ConfigError(f"run {run.workdir}: {err}") from None


def run_state(workdir: str) -> str:
    """finished | failed | unfinished | pending, from the files in a run's workdir."""
    if os.path.exists(os.path.join(workdir, "result.json")):
        return "finished"
    status = os.path.join(workdir, STATUS_FILE)
    if os.path.exists(status):
        with open(status) as f:
            if json.load(f).get("status") == "failed":
                return "failed"
    return "unfinished" if os.path.exists(os.path.join(workdir, "config.json")) else "pending"


def command(config_arg: str, run: Run, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "ncl_jax.main",
        f"--config={config_arg}",
        f"--workdir={run.workdir}",
        *extra,
        *run.overrides(),
    ]


def execute(config_arg: str, runs: list[Run], extra: list[str], *, log=print) -> dict[str, int]:
    """Trains the runs one after another, skipping finished ones; returns counts by outcome."""
    outcome = {"finished": 0, "skipped": 0, "failed": 0}
    started = time.monotonic()
    todo = [r for r in runs if run_state(r.workdir) != "finished"]
    outcome["skipped"] = len(runs) - len(todo)
    for index, run in enumerate(todo):
        elapsed = time.monotonic() - started
        eta = f", ETA {elapsed / index * (len(todo) - index) / 60:.0f} min" if index else ""
        log(f"[{index + 1}/{len(todo)}] {run.workdir} ({elapsed / 60:.0f} min elapsed{eta})")
        os.makedirs(run.workdir, exist_ok=True)
        with open(os.path.join(run.workdir, "train.log"), "a") as out:
            result = subprocess.run(
                command(config_arg, run, extra), stdout=out, stderr=subprocess.STDOUT
            )
        if result.returncode == 0 and run_state(run.workdir) == "finished":
            outcome["finished"] += 1
            _write_status(run.workdir, {"status": "finished"})
        else:
            outcome["failed"] += 1
            last = _last_line(os.path.join(run.workdir, "train.log"))
            _write_status(
                run.workdir, {"status": "failed", "returncode": result.returncode, "error": last}
            )
            log(f"    failed (exit {result.returncode}): {last}")
    return outcome


def _write_status(workdir: str, status: dict) -> None:
    write_json_atomically(os.path.join(workdir, STATUS_FILE), status)


def _last_line(path: str) -> str:
    with open(path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    return lines[-1][:300] if lines else ""


def write_plan(workdir: str, config_arg: str, axes: list[Axis], runs: list[Run]) -> None:
    write_json_atomically(
        os.path.join(workdir, SWEEP_FILE),
        {
            "config": config_arg,
            "axes": [{"fields": list(a.fields), "values": list(a.values)} for a in axes],
            "runs": [
                {
                    "workdir": os.path.relpath(r.workdir, workdir),
                    "setting": r.setting,
                    "subset_seed": r.subset_seed,
                    "seed": r.seed,
                }
                for r in runs
            ],
        },
    )
