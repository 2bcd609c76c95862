"""Preemption and Ctrl-C during training: a context manager that turns SIGTERM (and, in a
single-process run, SIGINT) into a request the training loop reads at each step boundary, so a
stopped run saves a checkpoint first and resumes exactly (training/loop.py).
"""

from __future__ import annotations

import os
import signal
import sys


class StopSignals:
    """SIGTERM (preemption) and, in a single-process run, SIGINT (Ctrl-C) ask the loop to save
    a checkpoint at the next step boundary and stop. A second SIGINT exits at once (status
    130) without saving: the newest checkpoint on disk stays the resume point.

    Multi-process runs keep Python's default SIGINT: their hosts agree on the stopping step
    through Orbax's preemption sync, which only SIGTERM reaches."""

    def __init__(self, *, catch_sigint: bool, on_abort=None):
        self.received: str | None = None  # "SIGTERM" or "SIGINT"
        self._catch_sigint = catch_sigint
        self._on_abort = on_abort or (lambda: None)
        self._previous: dict = {}

    def __enter__(self):
        self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._handle_sigterm)
        if self._catch_sigint:
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._handle_sigint)
        return self

    def _handle_sigterm(self, signum, frame):
        del signum, frame
        self.received = self.received or "SIGTERM"

    def _handle_sigint(self, signum, frame):
        del signum, frame
        if self.received == "SIGINT":
            print(
                "\nCtrl-C again: exited at once without saving; rerun the same command to resume "
                "from the newest checkpoint.",
                file=sys.stderr,
                flush=True,
            )
            self._on_abort()
            os._exit(130)
        self.received = "SIGINT"
        print(
            "\nCtrl-C: saving a checkpoint at the next step boundary, then stopping (press "
            "Ctrl-C again to exit at once without saving).",
            file=sys.stderr,
            flush=True,
        )

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
