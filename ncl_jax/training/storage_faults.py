"""Storage faults of a checkpoint write or read, reported in one line: a save that failed
for lack of space or rights (SaveFailed, its traceback written to a file), Orbax's duplicate
error records about it, and the asyncio noise that follows a failed restore."""

from __future__ import annotations

import errno
import logging as logging_lib
import os
import re
import sys
import tempfile
import traceback

from etils import epath

from ncl_jax.errors import CheckpointError

# errno values of a save that failed for lack of space or rights, not for a bug.
STORAGE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EFBIG, errno.EIO}
)
# TensorStore reports them inside a ValueError: "... [os_error_code='28']".
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")
TRACEBACK_FILE = "error_traceback.txt"


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


class StorageErrorsReported(logging_lib.Filter):
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


def quiet_orbax_storage_errors() -> None:
    """Installs StorageErrorsReported on the absl logger (once)."""
    absl_logger = logging_lib.getLogger("absl")
    if not any(isinstance(f, StorageErrorsReported) for f in absl_logger.filters):
        absl_logger.addFilter(StorageErrorsReported())


def megabytes(nbytes: int) -> str:
    return f"{nbytes / 2**20:.1f} MiB"


def write_traceback(workdir: str, err: BaseException) -> str:
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


def drop_late_reads_of_failed_restores() -> None:
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
