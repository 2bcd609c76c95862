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

A save that fails for lack of space or rights (STORAGE_ERRNOS) raises SaveFailed, one line
naming the checkpoint, the space it needs and has, and the newest good checkpoint, with the
traceback in WORKDIR/error_traceback.txt; Orbax's uncommitted directory of that step is
ignored, and the rerun resumes from the newest committed one.

No checkpoint ever holds a non-finite value (NaN, Inf, or |x| >= 2^64, which only a diverged
update produces; `metrics.all_finite`): `save` refuses such a state and `restore` refuses to
return one, so a damaged or pre-guard checkpoint cannot be resumed or evaluated by accident.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging as logging_lib
import os
import re
import shutil
import sys
import tempfile
import time
import traceback
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import traverse_util
from jax.experimental import multihost_utils

from ncl_jax.config.resume_rules import check_extension, resume_differences
from ncl_jax.config.variants import LEGACY_DEFAULTS
from ncl_jax.core.metrics import tree_is_finite
from ncl_jax.errors import CheckpointError, ConfigError, TrainingDiverged

KINDS = ("checkpoints", "best_ensemble", "best_single")


# errno values of a save that failed for lack of space or rights, not for a bug.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG, errno.EIO}
)
# TensorStore reports them inside a ValueError: "... [os_error_code='28']".
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
TRACEBACK_FILE = "error_traceback.txt"
# The meta field holding state_digest(state) (absent in checkpoints of older versions).
DIGEST_KEY = "state_sha256"


class SaveFailed(CheckpointError):
    """A checkpoint could not be written (no space, no permission, quota); the newest
    committed checkpoint is intact and a rerun resumes from it."""


def storage_errno(err: BaseException) -> int | None:
    """The errno of a failed write somewhere in `err`'s chain (an OSError, or TensorStore's
    `os_error_code` inside Orbax's ValueError) when it is one of STORAGE_ERRNOS, else None."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in STORAGE_ERRNOS:
            return err.errno
        match = _OS_ERROR_CODE.search(str(err))
        if match and int(match[1]) in STORAGE_ERRNOS:
            return int(match[1])
        err = err.__cause__ or err.__context__
    return None


class _StorageErrorsReported(logging_lib.Filter):
    """Drops Orbax's ERROR records (each with a traceback, several per failed save, from its
    background threads) about a failed write with a STORAGE_ERRNOS code: RunCheckpoints
    reports that failure as one SaveFailed line, with the traceback in a file."""

    def filter(self, record: logging_lib.LogRecord) -> bool:
        if record.levelno < logging_lib.ERROR or "/orbax/" not in record.pathname:
            return True
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            return storage_errno(record.exc_info[1]) is None
        match = _OS_ERROR_CODE.search(text)
        return not (match and int(match[1]) in STORAGE_ERRNOS)


def _quiet_orbax_storage_errors() -> None:
    absl_logger = logging_lib.getLogger("absl")
    if not any(isinstance(f, _StorageErrorsReported) for f in absl_logger.filters):
        absl_logger.addFilter(_StorageErrorsReported())


class CheckpointRemoved(CheckpointError):
    """The checkpoint was deleted while it was being read: a training run writing the workdir
    rotated it away (keep_checkpoints, or the single best_* kept). Nothing is damaged."""


NONFINITE = "NaN, Inf or |x| >= 2^64"

# Written once a run has trained every epoch: what ncl_jax.report reads (a workdir without it
# is unfinished).
RESULT_FILE = "result.json"


def _flatten(tree: dict) -> dict[str, Any]:
    return traverse_util.flatten_dict(tree, sep=".")


def _flat_saved(saved: dict) -> dict[str, Any]:
    """A saved config, flat; a field it predates counts as its legacy value
    (ncl_jax.config.variants.LEGACY_DEFAULTS)."""
    return {**LEGACY_DEFAULTS, **_flatten(saved)}


def config_differences(saved: dict, current: dict) -> list[str]:
    """Fields (dotted) whose values differ and that change the maths
    (ncl_jax.config.resume_rules: all but RUNTIME_FIELDS)."""
    return resume_differences(_flat_saved(saved), _flatten(current))[0]


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


def _is_late_read(unraisable) -> bool:
    """Whether an unraisable exception is asyncio's 'Event loop is closed' raised in
    call_soon_threadsafe: TensorStore delivering, after Orbax gave up a restore on its first
    failed read and closed that restore's event loop, the results of its other reads."""
    tb = unraisable.exc_traceback
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return (
        isinstance(unraisable.exc_value, RuntimeError)
        and str(unraisable.exc_value) == "Event loop is closed"
        and tb is not None
        and tb.tb_frame.f_code.co_name == "_check_closed"
        and "asyncio" in tb.tb_frame.f_code.co_filename
    )


def _drop_late_reads_of_failed_restores() -> None:
    """Silences the dozens of 'Event loop is closed' tracebacks (sys.unraisablehook) that
    follow a restore of a damaged checkpoint (_is_late_read); the restore has already failed
    with its own message, and nothing else reaches the closed loop. Other unraisable
    exceptions go to the previous hook. Installed once, at the first failed restore."""
    previous = sys.unraisablehook
    if getattr(previous, "ncl_drops_late_reads", False):
        return

    def hook(unraisable) -> None:
        if not _is_late_read(unraisable):
            previous(unraisable)

    hook.ncl_drops_late_reads = True
    sys.unraisablehook = hook


def state_digest(state: Any) -> dict[str, str]:
    """{array path: SHA-256 of its bytes} of a host state tree. Saved in each checkpoint's
    meta (DIGEST_KEY) and compared on restore, so bytes that rot on disk into other finite
    values are caught; the cost per checkpoint is in docs/performance.md."""
    return {
        jax.tree_util.keystr(path): hashlib.sha256(
            np.ascontiguousarray(np.asarray(leaf)).tobytes()
        ).hexdigest()
        for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]
    }


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


def _megabytes(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def _write_traceback(workdir: str, err: BaseException) -> str:
    """Writes err's traceback to WORKDIR/error_traceback.txt, or (when the workdir cannot
    take it, as on a full disk) to the temporary directory; returns the path written."""
    text = "".join(traceback.format_exception(err))
    for folder in (workdir, tempfile.gettempdir()):
        name = TRACEBACK_FILE if folder == workdir else f"ncl_jax_{os.getpid()}_{TRACEBACK_FILE}"
        path = os.path.join(folder, name)
        try:
            epath.Path(path).write_text(text)
            return path
        except OSError:
            continue
    return "the traceback could not be written anywhere"


class RunCheckpoints:
    """The three checkpoint managers of one workdir; read_only for evaluation."""

    def __init__(self, workdir: str, *, keep: int = 2, read_only: bool = False):
        self.workdir = os.fspath(workdir)
        self.read_only = read_only
        self._keep = keep
        self._managers: dict[str, ocp.CheckpointManager] = {}
        self._pending: list[tuple[str, int, int]] = []  # (kind, step, bytes) being written
        if not read_only:
            _quiet_orbax_storage_errors()
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
        flat_saved, flat_current = _flat_saved(saved), _flatten(current)
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
            _drop_late_reads_of_failed_restores()
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
            space = f"; it needs about {_megabytes(nbytes)}, {_megabytes(free)} are free there"
        good = self.latest_step()
        last_good = (
            f"the last good checkpoint is {self.workdir}/checkpoints/{good}: free space (or fix "
            "the permissions) and rerun the same command to resume from it"
            if good is not None
            else "no checkpoint was written yet: free space and rerun the same command"
        )
        details = _write_traceback(self.workdir, err)
        raise SaveFailed(
            f"saving checkpoint {where} failed: {os.strerror(code)} (errno {code}){space}; "
            f"{last_good}. Details: {details}"
        ) from err
