"""One writer per workdir: WORKDIR/train.lock names the training run that holds it.

A second training run on a workdir is refused at once while the holder runs; two runs writing
the same checkpoints would otherwise both die in Orbax's asynchronous save (or, with other
timing, interleave their steps). The lock is a JSON file created with O_CREAT|O_EXCL, so of two
runs started together exactly one gets it. It records the host, the pid, the process's start
time in the kernel's clock (to tell a pid the system reused) and the wall-clock start; its
modification time is refreshed at every checkpoint (`touch`), so a message can say when the
holder was last active.

A lock whose holder is gone is taken over with a warning: on the same host that is known for
certain (the pid is gone, or belongs to a process started later). On another host (a shared
file system, several containers) liveness cannot be checked from here, so the run is refused
unless the user, having checked, passes `take_over=True` (`--take_over_lock`). On `gs://` and
other remote workdirs there is no atomic create: the check is made, but two runs started in
the same second can both pass it.

Hand-written: neither Orbax nor etils locks a directory (Orbax's own lock only orders its
save threads within one process), and filelock's OS locks vanish with the process and are
unreliable on network file systems, while the holder's name is what the user needs.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import time

from absl import logging
from etils import epath

from ncl_jax.errors import CheckpointError

LOCK_FILE = "train.lock"


def _process_start(pid: int) -> str | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks since boot), None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def this_process() -> dict:
    """The record the lock file holds for the running process."""
    pid = os.getpid()
    return {
        "host": socket.gethostname(),
        "pid": pid,
        "process_start": _process_start(pid),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def holder_alive(holder: dict) -> bool | None:
    """True/False for a holder on this host; None when it runs on another (unknowable)."""
    if holder.get("host") != socket.gethostname():
        return None
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    recorded = holder.get("process_start")
    return recorded is None or _process_start(pid) in (None, recorded)


def describe(holder: dict, path: epath.Path | None = None) -> str:
    """'host H, pid P, started T[, last active A]' for messages."""
    text = f"host {holder.get('host')}, pid {holder.get('pid')}, started {holder.get('started')}"
    if path is not None:
        try:
            mtime = path.stat().mtime
            active = datetime.datetime.fromtimestamp(mtime, datetime.UTC)
            text += f", last active {active.isoformat(timespec='seconds')}"
        except OSError:
            pass
    return text


class WorkdirLock:
    """The lock of one workdir; `acquire` before writing anything, `release` at the end."""

    def __init__(self, workdir: str, *, take_over: bool = False):
        self.path = epath.Path(workdir) / LOCK_FILE
        self.take_over = take_over
        self._record = this_process()
        self._held = False

    def acquire(self) -> None:
        """Takes the lock, or raises CheckpointError naming the holder (one line)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):  # another run may take or drop the lock between our calls
            if self._create():
                self._held = True
                return
            holder = self._read()
            if holder is None:
                continue  # removed meanwhile (or still being written): look again
            alive = holder_alive(holder)  # this very process counts as alive too
            if alive is None and not self.take_over:
                raise CheckpointError(
                    f"{self.path.parent} is locked by a training run on another host "
                    f"({describe(holder, self.path)}; lock file {self.path}); this host cannot "
                    "tell whether it still runs. If it has ended, rerun with --take_over_lock; "
                    "otherwise use another --workdir."
                )
            if alive and not self.take_over:
                raise CheckpointError(
                    f"{self.path.parent} is in use by another training run "
                    f"({describe(holder, self.path)}; lock file {self.path}); wait for it to end, "
                    f"stop it (kill -TERM {holder.get('pid')} saves a checkpoint first), or "
                    "use another --workdir."
                )
            logging.warning(
                "Taking over the lock of %s from %s (%s).",
                self.path.parent,
                describe(holder),
                "--take_over_lock" if alive is not False else "that process has ended",
            )
            self._remove_stale()
        raise CheckpointError(
            f"could not lock {self.path.parent}: other runs keep taking {self.path}; "
            "start one run per workdir."
        )

    def _create(self) -> bool:
        text = json.dumps(self._record)
        if "://" in os.fspath(self.path):  # no O_EXCL on object stores: check, then write
            if self.path.exists():
                return False
            self.path.write_text(text)
            return True
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read(self, *, retry: bool = True) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # empty or garbled: being written, or its writer died
            if retry:
                time.sleep(0.5)
                return self._read(retry=False)
            return {"host": socket.gethostname(), "pid": -1, "started": "unknown"}

    def _remove_stale(self) -> None:
        """Moves the stale lock away atomically: of two runs taking it over, one succeeds."""
        stale = self.path.parent / f"{LOCK_FILE}.stale.{os.getpid()}"
        try:
            self.path.rename(stale)
            stale.unlink()
        except FileNotFoundError:
            pass  # another run moved it first; the next _create decides

    def touch(self) -> None:
        """Marks the holder as active now (the lock file's modification time)."""
        if self._held and "://" not in os.fspath(self.path):
            try:
                os.utime(self.path)
            except OSError:
                pass

    def release(self) -> None:
        """Removes the lock if this process still holds it."""
        if not self._held:
            return
        self._held = False
        holder = self._read()
        if (
            holder
            and holder.get("pid") == self._record["pid"]
            and holder.get("host") == self._record["host"]
        ):
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
