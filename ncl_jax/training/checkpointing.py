"""Orbax checkpoints of a run: periodic/final, best-by-ensemble and best-by-single.

Layout under the workdir:
  config.json              the run's config (checked on resume: a different config is refused)
  checkpoints/<step>/      periodic, end-of-training and SIGTERM checkpoints (newest kept)
  best_ensemble/<step>/    best ensemble top-1 on the evaluation split (official selection)
  best_single/<step>/      best single-expert top-1 on the evaluation split
  set_aside/<kind>/<step>/ checkpoints newer than the step a run resumed from (unreadable,
                           non-finite, or explicitly superseded with --step): moved, never
                           deleted
Each checkpoint holds two items: `state` (the unreplicated TrainState as host arrays, so it
restores on any device count) and `meta` (JSON: `step`; `epoch`, the number of whole epochs
completed at that step, for every kind, so a SIGTERM checkpoint taken mid-epoch e (0-based)
records e; `best`; `last_eval`; `best_evals`, the whole evaluation at each best epoch).

No checkpoint ever holds a non-finite value (NaN, Inf, or |x| >= 2^64, which only a diverged
update produces; `metrics.all_finite`): `save` refuses such a state and `restore` refuses to
return one, so a damaged or pre-guard checkpoint cannot be resumed or evaluated by accident.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils

from ncl_jax.config.variants import LEGACY_DEFAULTS
from ncl_jax.core.metrics import tree_is_finite
from ncl_jax.errors import CheckpointError, ConfigError, TrainingDiverged

KINDS = ("checkpoints", "best_ensemble", "best_single")
NONFINITE = "NaN, Inf or |x| >= 2^64"

# Fields that may change between a run and its resumption without changing what is trained.
RESUMABLE_FIELDS = (
    "log_every_steps",
    "checkpoint_every_epochs",
    "eval_every_epochs",
    "keep_checkpoints",
    "eval_batch_size",
    "dataset.data_dir",
    "dataset.download",
    "dataset.prefetch",
    "dataset.num_parallel_calls",
    "dataset.cache",
    "dataset.cache_path",
    "dataset.eval_max_examples",
    "model.expert_strategy",
    "preset_variant",
    "eval_aggregation",
    "eval_tau",
)


def _flatten(tree: dict) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep=".")


def config_differences(saved: dict, current: dict) -> list[str]:
    """Fields (dotted) whose values differ, ignoring those in RESUMABLE_FIELDS. A field the
    saved config predates counts as its legacy value (ncl_jax.config.variants.LEGACY_DEFAULTS)."""

    a, b = {**LEGACY_DEFAULTS, **_flatten(saved)}, _flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in RESUMABLE_FIELDS and a.get(k) != b.get(k)]


CHECKPOINT_CHOICES = ("latest", "best_ensemble", "best_single")


def parse_checkpoint(value: str | int | None) -> str | int | None:
    """A `--checkpoint` flag: None (the program's default), latest | best_ensemble |
    best_single, or a step number (int). Raises ConfigError otherwise."""

    if value is None or str(value).strip() == "":
        return None
    text = str(value).strip()
    if text in CHECKPOINT_CHOICES:
        return text
    if text.isdigit():
        return int(text)
    raise ConfigError(
        f"--checkpoint={value!r} is not valid; use one of {', '.join(CHECKPOINT_CHOICES)} "
        "or a step number."
    )


def shape_mismatch(restored: Any, target: Any) -> str | None:
    """None when every restored array has its target's shape, else what differs.

    Orbax restores arrays at their saved shapes even when the target's differ (a config.json
    edited after training, a checkpoint copied from another run), which would only fail deep
    inside Flax; this names the first difference instead."""
    paths = lambda tree: {
        jax.tree_util.keystr(k): tuple(np.shape(v))
        for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }
    saved, wanted = paths(restored), paths(target)
    differ = [k for k in wanted if saved.get(k) != wanted[k]] + [
        k for k in saved if k not in wanted
    ]
    if not differ:
        return None
    first = differ[0]
    return (
        f"{len(differ)} arrays differ, e.g. {first.lstrip('.')}: saved {saved.get(first)}, "
        f"the config needs {wanted.get(first)}"
    )


def write_json_atomically(path: epath.PathLike, value: Any) -> None:
    """Writes JSON via a temporary file and a rename (local disks and gs:// alike), so a
    crash never leaves a half-written file."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, sort_keys=True))
    tmp.replace(path)


def config_to_dict(config) -> dict:
    """A JSON-safe dict of a ConfigDict (tuples become lists, as after a JSON round trip)."""
    return json.loads(config.to_json_best_effort(sort_keys=True))


class RunCheckpoints:
    """The three checkpoint managers of one workdir; read_only for evaluation."""

    def __init__(self, workdir: str, *, keep: int = 2, read_only: bool = False):
        self.workdir = os.fspath(workdir)
        self.read_only = read_only
        self._keep = keep
        self._managers: dict[str, ocp.CheckpointManager] = {}
        self._open()

    def _open(self) -> None:
        for kind in KINDS:
            path = epath.Path(self.workdir) / kind
            if self.read_only and not path.is_dir():
                continue
            options = ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(
                    self._keep if kind == "checkpoints" else 1
                ),
                create=not self.read_only,
                read_only=self.read_only,
                enable_async_checkpointing=not self.read_only,
                # Three managers may save the same step: their multi-host barriers need
                # distinct names.
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    barrier_sync_key_prefix=kind
                ),
            )
            self._managers[kind] = ocp.CheckpointManager(
                path if "://" in self.workdir else path.absolute(),
                options=options,
                item_names=("state", "meta"),
            )

    # ------------------------------------------------------------------ config
    @property
    def config_path(self) -> epath.Path:
        return epath.Path(self.workdir) / "config.json"

    def saved_config(self) -> dict | None:
        if not self.config_path.exists():
            return None
        return json.loads(self.config_path.read_text())

    def check_or_write_config(self, config) -> None:
        """Refuses a workdir whose checkpoints come from a different config; records the
        config of a fresh run (a resumed run leaves the recorded one untouched)."""
        current = config_to_dict(config)
        saved = self.saved_config()
        if saved is not None and self.latest_step() is not None:
            diff = config_differences(saved, current)
            if diff:
                shown = ", ".join(
                    f"{k}: {_flatten(saved).get(k)!r} -> {_flatten(current).get(k)!r}"
                    for k in diff[:4]
                )
                raise CheckpointError(
                    f"{self.workdir} holds checkpoints of a different config ({shown}"
                    f"{', ...' if len(diff) > 4 else ''}); use a new --workdir or the same "
                    "config."
                )
            return
        if jax.process_index() == 0:
            write_json_atomically(self.config_path, current)

    # ------------------------------------------------------------------ steps
    def steps(self, kind: str = "checkpoints") -> list[int]:
        manager = self._managers.get(kind)
        return list(manager.all_steps()) if manager else []

    def latest_step(self, kind: str = "checkpoints") -> int | None:
        manager = self._managers.get(kind)
        return manager.latest_step() if manager else None

    def find(self, step: int | None) -> tuple[str, int]:
        """(kind, step) of a step in any of the managers (None: newest periodic/final)."""
        if step is None:
            latest = self.latest_step()
            if latest is None:
                raise CheckpointError(
                    f"no checkpoint in {self.workdir}/checkpoints; train first with "
                    f"python -m ncl_jax.main --workdir={self.workdir} ..."
                )
            return "checkpoints", latest
        for kind in KINDS:
            if step in self.steps(kind):
                return kind, step
        raise CheckpointError(
            f"no checkpoint at step {step} in {self.workdir}; available steps: "
            f"{self.all_steps() or 'none'}."
        )

    def select(self, which: str | int | None) -> tuple[str, int]:
        """(kind, step) of a `parse_checkpoint` value: None or latest = the newest
        periodic/final checkpoint, best_ensemble / best_single = the newest of that kind, a
        step = that step of any kind. Raises CheckpointError naming what exists."""
        if which in CHECKPOINT_CHOICES[1:]:
            step = self.latest_step(which)
            if step is None:
                raise CheckpointError(
                    f"{self.workdir} has no {which} checkpoint (saved at evaluated epochs); "
                    f"available steps: {self.all_steps() or 'none'} (pass --checkpoint=latest "
                    "or a step)."
                )
            return which, step
        return self.find(None if which in (None, "latest") else which)

    def all_steps(self) -> list[int]:
        """Every step held by any kind, ascending."""
        return sorted({s for kind in KINDS for s in self.steps(kind)})

    def reached_preemption(self, step: int) -> bool:
        """True on every host at the same step once any host was told to stop (multi-host)."""
        return self._managers["checkpoints"].reached_preemption(step)

    # ------------------------------------------------------------------ save / restore
    def save(self, kind: str, step: int, state: Any, meta: dict) -> None:
        """Saves host copies of `state` (unreplicated) and `meta`; all processes call it.

        A step that already exists is left as it is: a resumed run that replays the same
        steps produces the same state, and an existing checkpoint is never overwritten."""
        if step in self.steps(kind):
            return
        host_state = jax.tree.map(np.asarray, jax.device_get(state))
        if not tree_is_finite(host_state):  # the training loop stops before this; never save
            raise TrainingDiverged(
                f"refused to save a state with non-finite values ({NONFINITE}) at step {step} "
                f"({kind}). {self.newest_finite_hint()}"
            )
        self._managers[kind].save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(self, kind: str, step: int, target: Any) -> tuple[Any, dict]:
        """Restores into the structure of `target` (host arrays). Raises CheckpointError for a
        corrupt, partial, incompatible or non-finite checkpoint; nothing on disk is touched."""
        host_target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), target)
        where = f"{self.workdir}/{kind}/{step}"
        others = [s for s in self.all_steps() if s != step]
        hint = (
            f"it was left untouched; other steps: {others} (use one with --step=N for "
            "training and evaluate, --checkpoint=N for analyze and export), or move it away."
            if others
            else "it was left untouched; no other checkpoint exists: use a new --workdir."
        )
        try:
            restored = self._managers[kind].restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(host_target), meta=ocp.args.JsonRestore()
                ),
            )
        except Exception as err:  # orbax/tensorstore raise many types for damaged files
            first_line = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
            raise CheckpointError(
                f"checkpoint {where} cannot be read ({type(err).__name__}: {first_line}); {hint}"
            ) from err
        mismatch = shape_mismatch(restored["state"], host_target)
        if mismatch:
            raise CheckpointError(
                f"checkpoint {where} does not match the run's config ({mismatch}); it was left "
                "untouched: use the config.json of the run that trained it (a checkpoint of "
                "another model, class count or K cannot be restored)."
            )
        if not tree_is_finite(restored["state"]):
            raise CheckpointError(
                f"checkpoint {where} holds non-finite values (NaN, Inf or |x| >= 2^64); {hint}"
            )
        return restored["state"], dict(restored["meta"])

    def newest_finite_hint(self) -> str:
        """Names the newest periodic checkpoint (all saved ones are finite) for messages."""
        latest = self.latest_step()
        if latest is None:
            return f"No checkpoint was written in {self.workdir}/checkpoints."
        return f"The newest good checkpoint is step {latest} in {self.workdir}/checkpoints."

    def set_aside(self, steps_by_kind: dict[str, list[int]]) -> list[str]:
        """Moves those checkpoints to WORKDIR/set_aside/<kind>/<step> (kept, never deleted),
        so that a run resumed from an earlier step can write its own; returns the new paths.
        All processes call it; process 0 moves, and the managers are reopened afterwards."""
        self.wait()
        self.close()
        moved = []
        for kind, steps in steps_by_kind.items():
            for step in steps:
                source = epath.Path(self.workdir) / kind / str(step)
                target = epath.Path(self.workdir) / "set_aside" / kind / str(step)
                suffix = 1
                while target.exists():
                    target = target.parent / f"{step}.{suffix}"
                    suffix += 1
                if jax.process_index() == 0 and source.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source.rename(target)
                moved.append(os.fspath(target))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("ncl_jax_set_aside")
        self._open()
        return moved

    def wait(self) -> None:
        for manager in self._managers.values():
            manager.wait_until_finished()

    def close(self) -> None:
        for manager in self._managers.values():
            manager.close()
