"""Orbax checkpoints of a run: periodic/final, best-by-ensemble and best-by-single.

Layout under the workdir:
  config.json              the run's config (checked on resume: a field that changes the
                           maths may not differ, ncl_jax.config.resume_rules)
  result.json              the final metrics, written once every epoch is trained
  checkpoints/<step>/      periodic, end-of-training and SIGTERM checkpoints (newest kept)
  best_ensemble/<step>/    best ensemble top-1 on the evaluation split (official selection)
  best_single/<step>/      best single-expert top-1 on the evaluation split
  set_aside/<kind>/<step>/ checkpoints newer than the step a run resumed from (unreadable,
                           non-finite, or explicitly superseded with --step): moved, never
                           deleted
  set_aside/result.json    the result of a run before it was extended (--extend_to_epochs)
Each checkpoint holds two items: `state` (the unreplicated TrainState as host arrays, so it
restores on any device count) and `meta` (JSON: `step`; `epoch`, the number of whole epochs
completed at that step, for every kind, so a SIGTERM checkpoint taken mid-epoch e (0-based)
records e; `best`; `last_eval`; `best_evals`, the whole evaluation at each best epoch;
`eval_pending`, true for an end-of-epoch checkpoint saved before that epoch's evaluation;
`state_sha256`, the SHA-256 of every array, checked on restore and not returned).

A save that fails for lack of space or rights (storage_faults.STORAGE_ERRNOS) raises
SaveFailed, one line naming the checkpoint, the space it needs and has, and the newest good
checkpoint, with the traceback in WORKDIR/error_traceback.txt; Orbax's uncommitted directory
of that step is ignored, and the rerun resumes from the newest committed one.

No checkpoint ever holds a non-finite value (NaN, Inf, or |x| >= 2^64, which only a diverged
update produces; `metrics.all_finite`): `save` refuses such a state and `restore` refuses to
return one, so a damaged or pre-guard checkpoint cannot be resumed or evaluated by accident.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from ncl_jax.config.resume_rules import check_extension, resume_differences
from ncl_jax.core.metrics import tree_is_finite
from ncl_jax.errors import CheckpointError, ConfigError, TrainingDiverged
from ncl_jax.training import run_files
from ncl_jax.training.run_files import RESULT_FILE, config_to_dict, write_json_atomically
from ncl_jax.training.state_checks import DIGEST_KEY, NONFINITE, shape_mismatch, state_digest
from ncl_jax.training.storage_faults import (
    SaveFailed,
    drop_late_reads_of_failed_restores,
    megabytes,
    quiet_orbax_storage_errors,
    storage_errno,
    write_traceback,
)

KINDS = ("checkpoints", "best_ensemble", "best_single")


class CheckpointRemoved(CheckpointError):
    """The checkpoint was deleted while it was being read: a training run writing the workdir
    rotated it away (keep_checkpoints, or the single best_* kept). Nothing is damaged."""


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


class RunCheckpoints:
    """The three checkpoint managers of one workdir; read_only for evaluation."""

    def __init__(self, workdir: str, *, keep: int = 2, read_only: bool = False):
        self.workdir = os.fspath(workdir)
        self.read_only = read_only
        self._keep = keep
        self._managers: dict[str, ocp.CheckpointManager] = {}
        self._pending: list[tuple[str, int, int]] = []  # (kind, step, bytes) being written
        if not read_only:
            quiet_orbax_storage_errors()
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

    def check_or_write_config(self, config, *, extend: bool = False) -> None:
        """Records the config of a fresh run. On a workdir with checkpoints, refuses a config
        that differs in a field that changes the maths (ncl_jax.config.resume_rules) with a
        CheckpointError naming the fields, and logs the runtime-only fields that differ (the
        recorded config is left as it was).

        extend: `config.num_epochs` may exceed the recorded one (ncl_jax.main
        --extend_to_epochs): refused with a ConfigError when the schedule cannot be extended
        faithfully (`check_extension`); otherwise config.json records the new num_epochs and
        a result.json of the shorter run is moved to set_aside/."""
        current = config_to_dict(config)
        saved = self.saved_config()
        if saved is None or self.latest_step() is None:
            if extend:
                raise CheckpointError(
                    f"--extend_to_epochs={config.num_epochs}: {self.workdir} has no "
                    "checkpoints to extend; train it with --config.num_epochs="
                    f"{config.num_epochs} instead."
                )
            if jax.process_index() == 0:
                write_json_atomically(self.config_path, current)
            return
        flat_saved, flat_current = run_files.flat_saved(saved), run_files.flatten(current)
        extending = extend and flat_saved.get("num_epochs") != config.num_epochs
        if extending:
            check_extension(flat_saved, config.num_epochs)
            flat_saved["num_epochs"] = config.num_epochs
        refused, accepted = resume_differences(flat_saved, flat_current)
        if refused:
            shown = ", ".join(
                f"{k}: {flat_saved.get(k)!r} -> {flat_current.get(k)!r}" for k in refused[:4]
            )
            hint = (
                " (to train a run for more epochs, pass --extend_to_epochs=N instead: "
                "docs/training.md#extending-a-run)"
                if "num_epochs" in refused
                else ""
            )
            raise CheckpointError(
                f"{self.workdir} holds checkpoints of a different config ({shown}"
                f"{', ...' if len(refused) > 4 else ''}); use a new --workdir or the same "
                f"config{hint}."
            )
        if accepted:
            logging.warning(
                "Resuming with runtime-only changes (config.json keeps the recorded values): %s",
                ", ".join(
                    f"{k}: {flat_saved.get(k)!r} -> {flat_current.get(k)!r}" for k in accepted
                ),
            )
        if extending and jax.process_index() == 0:
            saved["num_epochs"] = config.num_epochs
            write_json_atomically(self.config_path, saved)
            moved = self._set_aside_file(RESULT_FILE)
            logging.warning(
                "Extending %s to %d epochs%s.",
                self.workdir,
                config.num_epochs,
                f"; the shorter run's {RESULT_FILE} is now {moved}" if moved else "",
            )

    def _set_aside_file(self, name: str) -> str | None:
        """Moves WORKDIR/name to WORKDIR/set_aside/name (a free name there); its new path,
        or None when there was no such file."""
        source = epath.Path(self.workdir) / name
        if not source.exists():
            return None
        target = epath.Path(self.workdir) / "set_aside" / name
        suffix = 1
        while target.exists():
            target = target.parent / f"{name}.{suffix}"
            suffix += 1
        target.parent.mkdir(parents=True, exist_ok=True)
        source.rename(target)
        return os.fspath(target)

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
        steps produces the same state, and an existing checkpoint is never overwritten.
        The write finishes in the background; a write that fails for lack of space or
        rights raises SaveFailed here or from the next `wait`/`close`."""
        if step in self.steps(kind):
            return
        host_state = jax.tree.map(np.asarray, jax.device_get(state))
        if not tree_is_finite(host_state):  # the training loop stops before this; never save
            raise TrainingDiverged(
                f"refused to save a state with non-finite values ({NONFINITE}) at step {step} "
                f"({kind}). {self.newest_finite_hint()}"
            )
        meta = {**meta, DIGEST_KEY: state_digest(host_state)}
        nbytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(host_state))
        self._pending.append((kind, step, nbytes))
        try:
            self._managers[kind].save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(meta)
                ),
                force=True,
            )
        except Exception as err:
            self._raise_save_failed(err)

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
            drop_late_reads_of_failed_restores()
            if self._removed(kind, step):
                raise CheckpointRemoved(
                    f"checkpoint {where} was removed while it was being read: a training run "
                    "writing this workdir keeps only its newest checkpoints (keep_checkpoints); "
                    f"nothing is damaged; steps now: {self._fresh_steps() or 'none'}."
                ) from err
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
        meta = dict(restored["meta"])
        saved_digest = meta.pop(DIGEST_KEY, None)  # None: saved before digests were written
        if saved_digest is not None:
            read = state_digest(restored["state"])
            differ = [
                k
                for k in sorted(set(saved_digest) | set(read))
                if saved_digest.get(k) != read.get(k)
            ]
            if differ:
                raise CheckpointError(
                    f"checkpoint {where} is damaged: {len(differ)} of its arrays do not match "
                    f"the SHA-256 digest written when it was saved (e.g. {differ[0].lstrip('.')}); "
                    f"{hint}"
                )
        return restored["state"], meta

    def restore_selected(self, which: str | int | None, target: Any) -> tuple[str, int, Any, dict]:
        """(kind, step, state, meta) of `select(which)`, restored. When a running training
        rotates that checkpoint away while it is read, the newest one of the same choice is
        read instead, with a warning; an explicit step raises CheckpointRemoved."""
        for _ in range(5):
            kind, step = self.select(which)
            try:
                return (kind, step, *self.restore(kind, step, target))
            except CheckpointRemoved as err:
                if isinstance(which, int):
                    raise
                logging.warning("%s Reading the newest one instead.", err)
                self.reload()
        raise CheckpointError(
            f"the checkpoints of {self.workdir} kept being replaced while they were read; "
            "evaluate once training has finished or pass a best_* choice."
        )

    def _removed(self, kind: str, step: int) -> bool:
        """True when <kind>/<step> no longer exists (after a moment, for a deletion under
        way), as after Orbax's rotation; False for a checkpoint still there (damaged)."""
        path = epath.Path(self.workdir) / kind / str(step)
        for _ in range(3):
            if not path.exists():
                return True
            time.sleep(0.2)
        return False

    def _fresh_steps(self) -> list[int]:
        self.reload()
        return self.all_steps()

    def reload(self) -> None:
        """Lists the steps on disk again (another process may have saved or rotated some)."""
        for manager in self._managers.values():
            manager.reload()

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
        """Blocks until every save has been committed; SaveFailed if one could not be."""
        try:
            for manager in self._managers.values():
                manager.wait_until_finished()
        except Exception as err:
            self._raise_save_failed(err)
        self._pending.clear()

    def close(self) -> None:
        try:
            for manager in self._managers.values():
                manager.close()
        except Exception as err:
            self._raise_save_failed(err)

    def _raise_save_failed(self, err: Exception) -> None:
        """Raises SaveFailed naming the checkpoint, the space it needs and has, and the
        newest good checkpoint, with the traceback written to a file; re-raises `err` when it
        is not a storage failure (a bug keeps its traceback)."""
        code = storage_errno(err)
        if code is None:
            raise err
        self.reload()
        unfinished = [p for p in self._pending if p[1] not in self.steps(p[0])]
        kind, step, nbytes = (unfinished or self._pending or [("checkpoints", "?", 0)])[0]
        self._pending.clear()
        where = f"{self.workdir}/{kind}/{step}"
        space = ""
        if "://" not in self.workdir:
            free = shutil.disk_usage(self.workdir).free
            space = f"; it needs about {megabytes(nbytes)}, {megabytes(free)} are free there"
        good = self.latest_step()
        last_good = (
            f"the last good checkpoint is {self.workdir}/checkpoints/{good}: free space (or fix "
            "the permissions) and rerun the same command to resume from it"
            if good is not None
            else "no checkpoint was written yet: free space and rerun the same command"
        )
        details = write_traceback(self.workdir, err)
        raise SaveFailed(
            f"saving checkpoint {where} failed: {os.strerror(code)} (errno {code}){space}; "
            f"{last_good}. Details: {details}"
        ) from err
