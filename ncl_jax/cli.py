"""Shared behaviour of the command-line entry points: one clear line for bad input."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from ncl_jax.errors import CheckpointError, ConfigError, DataError, TrainingDiverged

# Input errors only: anything else is a bug and keeps its traceback.
EXPECTED = (ConfigError, DataError, CheckpointError, FileNotFoundError)


_CHATTY = ("/orbax/", "/tensorflow_datasets/", "/xla_bridge.py", "/etils/")


class _QuietLibraries(logging.Filter):
    """Drops INFO chatter of Orbax/TFDS (dozens of lines per checkpoint); keeps warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not any(
            part in record.pathname for part in _CHATTY
        )


def run_cli(fn: Callable[[], object]) -> object:
    """Runs fn; expected input errors print one line `error: ...` and exit with status 2."""
    for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
        handler.addFilter(_QuietLibraries())
    try:
        return fn()
    except EXPECTED as err:
        _exit_with(err, 2)
    except TrainingDiverged as err:  # not bad input, but nothing a traceback would explain
        _exit_with(err, 1)


def _exit_with(err: Exception, status: int) -> None:
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)
