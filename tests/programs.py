"""Running the project's programs from tests: one place for how long one may take.

The limit turns a hung program into a failure that names its test, well inside CI's 90
minutes. It is not a speed check: a program that is merely slow must pass, also on a VM that
the host stops for minutes, as CI's once was under a tighter per-call limit (docs/performance.md,
Tests). NCL_TEST_PROGRAM_TIMEOUT_S overrides the limit.
"""

from __future__ import annotations

import os
import pathlib
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[1]
PROGRAM_TIMEOUT_S = float(os.environ.get("NCL_TEST_PROGRAM_TIMEOUT_S", "1800"))


def run_program(
    cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | os.PathLike = REPO
) -> subprocess.CompletedProcess:
    """`cmd` run to its end with text stdout/stderr captured (exit status not checked)."""
    return subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=PROGRAM_TIMEOUT_S
    )


def start_program(
    cmd: list[str], *, env: dict[str, str] | None = None, **kwargs
) -> subprocess.Popen:
    """`cmd` started in the background (Popen kwargs pass through; cwd defaults to the repo);
    wait for it with `proc.wait(timeout=PROGRAM_TIMEOUT_S)` or `communicate` likewise."""
    return subprocess.Popen(cmd, cwd=kwargs.pop("cwd", REPO), env=env, **kwargs)
