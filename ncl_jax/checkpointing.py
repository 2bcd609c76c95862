"""Orbax checkpoints of a run: periodic/final, best-by-ensemble and best-by-single.

Layout under the workdir:
  config.json              the run's config (checked on resume: a different config is refused)
  checkpoints/<step>/      periodic, end-of-training and SIGTERM checkpoints (newest kept)
  best_ensemble/<step>/    best ensemble top-1 on the evaluation split (official selection)
  best_single/<step>/      best single-expert top-1 on the evaluation split
Each checkpoint holds two items: `state` (the unreplicated TrainState as host arrays, so it
restores on any device count) and `meta` (JSON: epoch, step, metrics).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from ncl_jax.errors import CheckpointError

KINDS = ("checkpoints", "best_ensemble", "best_single")

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
    "dataset.eval_max_examples",
    "model.expert_strategy",
)


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def config_differences(saved: dict, current: dict) -> list[str]:
    """Fields (dotted) whose values differ, ignoring those in RESUMABLE_FIELDS."""
    a, b = _flatten(saved), _flatten(current)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in RESUMABLE_FIELDS and a.get(k) != b.get(k)]


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
        self._managers: dict[str, ocp.CheckpointManager] = {}
        for kind in KINDS:
            path = epath.Path(self.workdir) / kind
            if read_only and not path.is_dir():
                continue
            options = ocp.CheckpointManagerOptions(
                max_to_keep=keep if kind == "checkpoints" else 1,
                create=not read_only,
                read_only=read_only,
                enable_async_checkpointing=not read_only,
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
        available = sorted({s for kind in KINDS for s in self.steps(kind)})
        raise CheckpointError(
            f"no checkpoint at step {step} in {self.workdir}; available "
            f"steps: {available or 'none'}."
        )

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
        self._managers[kind].save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )

    def restore(self, kind: str, step: int, target: Any) -> tuple[Any, dict]:
        """Restores into the structure of `target` (host arrays). Raises CheckpointError for a
        corrupt, partial or incompatible checkpoint; nothing on disk is touched."""
        host_target = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), target)
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
                f"checkpoint {self.workdir}/{kind}/{step} cannot be read ({type(err).__name__}: "
                f"{first_line}); it was left untouched: evaluate/resume another step with "
                "--step, or move it away."
            ) from err
        return restored["state"], dict(restored["meta"])

    def wait(self) -> None:
        for manager in self._managers.values():
            manager.wait_until_finished()

    def close(self) -> None:
        for manager in self._managers.values():
            manager.close()
