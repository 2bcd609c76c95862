"""Shared behaviour of the command-line entry points: one clear line for bad input.

Every entry point (`python -m ncl_jax.X` and its `ncl-X` console script) starts through
`run_app`: flags are parsed by `parse_flags`, which turns any bad flag, config file, config
argument or config override into one `error:` line (exit status 2) instead of a traceback;
the work itself runs under `run_cli`, which does the same for bad input found later.
"""

from __future__ import annotations

import difflib
import logging
import re
import shlex
import sys
from collections.abc import Callable, Iterable, Sequence

from absl import app, flags

from ncl_jax.errors import CheckpointError, ConfigError, DataError, TrainingDiverged

# Input errors only: anything else is a bug and keeps its traceback.
EXPECTED = (ConfigError, DataError, CheckpointError, FileNotFoundError)


_CHATTY = ("/orbax/", "/tensorflow_datasets/", "/xla_bridge.py", "/etils/")
# Warnings Orbax gives for every read-only manager (evaluation opens them read-only on purpose).
_EXPECTED_WARNINGS = ("read_only=True", "directory is read only")


class _QuietLibraries(logging.Filter):
    """Drops INFO chatter of Orbax/TFDS (dozens of lines per checkpoint) and Orbax's warnings
    about read-only managers; keeps every other warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        chatty = any(part in record.pathname for part in _CHATTY)
        if record.levelno >= logging.WARNING:
            return not (chatty and any(w in record.getMessage() for w in _EXPECTED_WARNINGS))
        return not chatty


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


_SUGGESTION = re.compile(r"'(?P<key>[^'\\]+)\\?'.*Did you mean \"(?P<hint>[^\"]+)\"", re.S)
_EXCEPTION_LINE = re.compile(r"^\s*[A-Za-z_.]*(?:Error|Exception): (?P<msg>.+)$")
# Exceptions that ml_collections and absl raise for bad flags, config files and overrides.
_HELP_FLAGS = ("--help", "--helpshort", "--helpfull", "--helpxml", "-help", "-h", "-?")
_FLAG_ERRORS = (flags.Error, AttributeError, KeyError, ValueError, TypeError, OSError)


def not_a_field_message(path: str, fields: Iterable[str]) -> str:
    """One line for an unknown config field: its full dotted `path` and the nearest of the
    known dotted `fields` (difflib's similarity, best first)."""
    nearest = difflib.get_close_matches(path, list(fields), n=3, cutoff=0.0)
    if not nearest:
        return f"{path} is not a config field."
    others = f" (other near names: {', '.join(nearest[1:])})" if len(nearest) > 1 else ""
    return f"{path} is not a config field; did you mean {nearest[0]}?{others}"


_MISSING_KEY = re.compile(r"^\W*'(?P<key>[^'\\]+)\\?'")


def flag_error_message(
    err: BaseException, argv: Sequence[str], fields: Iterable[str] | None = None
) -> str:
    """One line for an exception raised while parsing `argv` (pure; tested directly).

    fields: the dotted fields of the config being overridden, when known; a misspelt
    override is then named by its full path with the nearest fields (`not_a_field_message`).
    """
    text = str(err.args[0]) if isinstance(err, AttributeError | KeyError) and err.args else str(err)
    suggestion = _SUGGESTION.search(text)
    missing = suggestion or (
        _MISSING_KEY.search(text) if isinstance(err, AttributeError | KeyError) else None
    )
    if missing:  # ml_collections: a misspelled field of a config override
        key = missing["key"]
        for arg in argv:
            path = arg.lstrip("-").split("=", 1)[0].split(".")
            if len(path) > 1 and key in path[1:]:
                if fields is not None:
                    return not_a_field_message(".".join(path[1:]), fields)
                if suggestion:
                    at = path.index(key, 1)
                    fixed = ".".join([*path[1:at], suggestion["hint"], *path[at + 1 :]])
                    return f"{'.'.join(path[1:])} is not a config field; did you mean {fixed}?"
                return f"{'.'.join(path[1:])} is not a config field."
        if suggestion:
            return f"{key} is not a config field; did you mean {suggestion['hint']}?"
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) > 1:  # a traceback inside the message: keep its head and the final cause
        causes = [m["msg"] for m in map(_EXCEPTION_LINE.match, lines) if m]
        head = lines[0].rstrip(":").replace("Error whilst parsing config file", "").rstrip(": ")
        tail = causes[-1] if causes else lines[-1].strip()
        if "Failed loading config file" in text:
            return f"cannot load the config file: {tail}"
        return f"{head}: {tail}" if head and head not in tail else tail
    return " ".join(text.split()) or type(err).__name__


def parse_flags(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """`flag_values(argv)`, with a bad flag or config reported as one `error:` line (exit 2).
    Used as absl's `flags_parser`."""
    try:
        rest = flag_values(list(argv))
        for name in flag_values:  # a config file that failed to load raises on first use
            getattr(flag_values[name].value, "_ncl_probe", None)
        return rest
    except SystemExit:  # absl's --help/--helpshort/--helpfull exit 1 after printing
        if any(a.split("=")[0] in _HELP_FLAGS for a in argv[1:]):
            sys.exit(0)
        raise
    except _FLAG_ERRORS as err:
        message = flag_error_message(err, argv, _config_fields(flag_values, argv))
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def _config_fields(flag_values: flags.FlagValues, argv: Sequence[str]) -> list[str] | None:
    """The dotted leaf fields of the config file named by a `--NAME=FILE` argument of a
    config-file flag, loaded again (it failed to load with its overrides); None when there is
    none or it does not load."""
    for arg in argv:
        name, _, value = arg.lstrip("-").partition("=")
        if "." in name or name not in flag_values or not value:
            continue
        try:
            config = flag_values[name].parser.parse(value)
            tree = config.to_dict()
        except Exception:  # not a config flag, or a config file that does not load
            continue
        return list(_dotted_leaves(tree))
    return None


def _dotted_leaves(tree: dict, prefix: str = "") -> Iterable[str]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _dotted_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def parse_numbers(values: Sequence[str] | None, flag: str) -> tuple[float, ...] | None:
    """A list flag of numbers (e.g. --tau=0.5,1) as floats; ConfigError for anything else."""
    if not values:
        return None
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise ConfigError(
            f"--{flag}={','.join(values)}: give numbers separated by commas, e.g. 0.5,1."
        ) from None


def reject_arguments(argv: Sequence[str]) -> None:
    """ConfigError for positional arguments given to a program that takes --flags only."""
    if len(argv) > 1:
        raise ConfigError(
            f"unexpected arguments {' '.join(argv[1:])}: this program takes --flags only "
            "(see --help)."
        )


def command_line() -> str:
    """The command that started this program, as a user would type it again: `python -m
    ncl_jax.X ...` for a module, the script's name for a console script."""

    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is not None and spec.name:
        program = ["python", "-m", spec.name.removesuffix(".__main__")]
    else:
        program = [sys.argv[0].rsplit("/", 1)[-1]]
    return shlex.join([*program, *sys.argv[1:]])


def run_app(
    main: Callable[[list[str]], None],
    *,
    define_flags: Callable[[], None] | None = None,
    required: Sequence[str] = (),
    takes_arguments: bool = False,
) -> None:
    """absl's app.run with `parse_flags`: what every console script and `-m` module calls.
    Programs define their flags in `define_flags`, not at import, so that modules can be
    imported side by side (the training loop imports evaluate, tests import them all).
    Unless `takes_arguments`, a positional argument is one `error:` line (a forgotten `--`
    would otherwise be ignored silently)."""
    # absl's --help prints the __main__ module's docstring: for a console script that is a
    # generated stub, so show the program's own (its commands and what it does).
    main_module = sys.modules["__main__"]
    if not getattr(main_module, "__doc__", None):
        main_module.__doc__ = sys.modules[main.__module__].__doc__
    if define_flags is not None:
        define_flags()
    if required:
        flags.mark_flags_as_required(list(required))
    _show_in_help(flags.FLAGS)

    def checked_main(argv: list[str]) -> None:
        if not takes_arguments:
            run_cli(lambda: reject_arguments(argv))
        main(argv)

    app.run(checked_main, flags_parser=parse_flags)


def _show_in_help(flag_values: flags.FlagValues) -> None:
    """--help/--helpshort list the flags of the main module only, which for a console script
    (or flags defined inside a function, or by ml_collections) is none of ours: register every
    non-absl flag as a key flag of the running program."""
    for module, defined in flag_values.flags_by_module_dict().items():
        if not module.startswith("absl"):
            for flag in defined:
                flag_values.register_key_flag_for_module(sys.argv[0], flag)
