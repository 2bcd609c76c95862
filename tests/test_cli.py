"""Bad input at every entry point: one `error:` line, exit status 2, nothing written.

In-process (fast tier): the flag parser on its own FlagValues, and each program's work under
`run_cli`, as the console scripts and `python -m` forms run them.
"""

import importlib

import pytest
from absl import flags
from ml_collections import config_flags

from ncl_jax import cli
from ncl_jax.errors import ConfigError
from tests.tiny import smoke_config


def _parse(argv):
    """cli.parse_flags on a fresh FlagValues with the training CLI's flags."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "workdir", flag_values=values)
    flags.mark_flags_as_required(["config", "workdir"], flag_values=values)
    return cli.parse_flags(argv, values), values


def _one_error_line(capsys, status=2):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["--config=configs/smoke.py", "--workdir=w", "--config.loss.hard_ratoi=0.2"],
            "error: loss.hard_ratoi is not a config field; did you mean loss.hard_ratio?",
        ),
        (
            ["--config=configs/smoke.py", "--workdir=w", "--config.los.hard_ratio=0.2"],
            "error: los.hard_ratio is not a config field; did you mean loss.hard_ratio?",
        ),
        (
            ["--config=configs/cifar10_lt.py:if100,officail", "--workdir=w"],
            "error: flag --config=configs/cifar10_lt.py:if100,officail: unknown config args "
            "['officail'] (did you mean official?); use ifN, paper|official, contrastive,",
        ),
        (
            ["--config=configs/smoke.py", "--workdir=w", "--config.loss.hard_ratio=abc"],
            "error: flag --config.loss.hard_ratio=abc: could not convert string to float: 'abc'",
        ),
        (
            ["--config=configs/nonexistent.py", "--workdir=w"],
            "error: cannot load the config file: [Errno 2] No such file or directory: "
            "'configs/nonexistent.py'",
        ),
        (["--config=configs/smoke.py", "--wrkdir=w"], "error: Unknown command line flag 'wrkdir'"),
        (
            ["--config=configs/smoke.py", "--workdir=w", "--config.dataset.nmae=x"],
            "error: dataset.nmae is not a config field; did you mean dataset.name?",
        ),
        (["--config=configs/smoke.py"], "error: flag --workdir=None: Flag --workdir must have"),
        (  # reported: printed only `error: "'lrr'"`
            ["--config=configs/smoke.py", "--workdir=w", "--config.optim.lrr=0.1"],
            "error: optim.lrr is not a config field; did you mean optim.learning_rate? (other "
            "near names: ",
        ),
    ],
)
def test_bad_flags_and_configs_are_one_line_with_the_librarys_hint(capsys, args, expected):
    with pytest.raises(SystemExit) as exit_info:
        _parse(["ncl-train", *args])
    assert exit_info.value.code == 2
    assert _one_error_line(capsys).startswith(expected)


def test_good_flags_parse_and_apply_overrides():
    rest, values = _parse(
        ["ncl-train", "--config=configs/smoke.py", "--workdir=w", "--config.loss.hard_ratio=0.5"]
    )
    assert rest == ["ncl-train"] and values.config.loss.hard_ratio == 0.5


def test_run_cli_turns_input_errors_into_one_line_and_keeps_bugs_as_tracebacks(capsys):
    def bad_input():
        raise ConfigError("batch_size=12 does not split over 8 devices;\n use a multiple of 8.")

    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(bad_input)
    assert exit_info.value.code == 2
    assert _one_error_line(capsys) == (
        "error: batch_size=12 does not split over 8 devices; use a multiple of 8."
    )
    with pytest.raises(ZeroDivisionError):
        cli.run_cli(lambda: 1 / 0)


@pytest.mark.parametrize(
    "module",
    [
        "ncl_jax.main",
        "ncl_jax.evaluate",
        "ncl_jax.analyze",
        "ncl_jax.export",
        "ncl_jax.predict",
        "ncl_jax.curves",
        "ncl_jax.benchmark",
        "ncl_jax.device_check",
        "ncl_jax.pretrained",
        "ncl_jax.sweep",
        "ncl_jax.report",
        "ncl_jax.check_dataset",
    ],
)
def test_every_entry_point_has_a_console_script_that_starts_through_parse_flags(module):
    import tomllib
    from pathlib import Path

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())[
        "project"
    ]["scripts"]
    assert f"{module}:cli" in scripts.values()
    assert callable(importlib.import_module(module).cli)


# ----------------------------------------------------------------------------- the programs
def _smoke(**overrides):
    return smoke_config(**overrides)


@pytest.mark.parametrize(
    "overrides, fragments",
    [
        ({"dataset.name": "cifar100", "dataset.download": "False"}, ("cifar100", "TFDS_DATA_DIR")),
        ({"batch_size": 12}, ("batch_size=12", "8 devices")),
        ({"moco.queue_size": 40}, ("moco.queue_size=40",)),
        ({"model.num_experts": 0}, ("num_experts=0",)),
        # reported: 0 and -16 were "does not split over 2 devices", and a bad view wrote
        # config.json, then died in a traceback
        ({"batch_size": 0}, ("batch_size=0 is out of range; it must be >= 1",)),
        ({"batch_size": -16}, ("batch_size=-16 is out of range; it must be >= 1",)),
        ({"dataset.train_view": "nosuch"}, ("dataset.train_view='nosuch' is unknown",)),
    ],
)
def test_bad_config_fails_with_one_line_before_compute(
    capsys, tmp_path, monkeypatch, overrides, fragments
):
    from ncl_jax.training.loop import train_and_evaluate

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "no_data"))  # cifar100 is never here
    with pytest.raises(SystemExit) as exit_info:
        cli.run_cli(lambda: train_and_evaluate(_smoke(**overrides), str(tmp_path / "w")))
    assert exit_info.value.code == 2
    line = _one_error_line(capsys)
    assert all(fragment in line for fragment in fragments), line
    assert not (tmp_path / "w").exists()  # a refused run leaves nothing behind


def test_evaluate_on_an_empty_workdir_fails_with_one_line(capsys, tmp_path):
    from ncl_jax.training.saved_runs import evaluate_saved_run

    with pytest.raises(SystemExit):
        cli.run_cli(lambda: evaluate_saved_run(str(tmp_path)))
    assert "no config.json" in _one_error_line(capsys)
    assert not list(tmp_path.iterdir())


def test_convert_pretrained_on_a_missing_file_fails_with_one_line(capsys, tmp_path):
    from ncl_jax.models import pretrained
    from ncl_jax.models.resnet import ResNet

    with pytest.raises(SystemExit):
        cli.run_cli(
            lambda: pretrained.convert_file(
                str(tmp_path / "no.pth"), str(tmp_path / "y.npz"), model=ResNet()
            )
        )
    assert "no.pth" in _one_error_line(capsys)
    assert not (tmp_path / "y.npz").exists()


def test_help_lists_the_programs_own_flags():
    """--help of a console script shows --config, --workdir, --step (absl lists only the main
    module's flags, and these are defined in ncl_jax modules and ml_collections)."""
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values)
    flags.DEFINE_integer("step", None, "resume step", flag_values=values)
    assert "--step" not in values.main_module_help()
    cli._show_in_help(values)
    assert "--step" in values.main_module_help() and "--config" in values.main_module_help()


@pytest.mark.parametrize("flag", ["--help", "--helpshort"])
def test_help_exits_with_status_zero(capsys, flag):
    """absl's help flags print the usage and exit 1; our programs exit 0."""
    from absl import app

    app.define_help_flags()  # what app.run does, on the global flags
    try:
        with pytest.raises(SystemExit) as exit_info:
            cli.parse_flags(["ncl-train", flag])
        assert exit_info.value.code == 0
    finally:
        flags.FLAGS.unparse_flags()


def test_resuming_a_step_of_a_fresh_workdir_is_one_error_and_creates_nothing(tmp_path, monkeypatch):
    from ncl_jax import data
    from ncl_jax.errors import CheckpointError
    from ncl_jax.training.loop import train_and_evaluate

    def no_dataset(*args, **kwargs):
        raise AssertionError("read (and decoded) the dataset before refusing --step")

    monkeypatch.setattr(data, "get_dataset_info", no_dataset)
    with pytest.raises(CheckpointError, match="has no checkpoints to resume"):
        train_and_evaluate(_smoke(), str(tmp_path / "fresh"), resume_step=3)
    assert not (tmp_path / "fresh").exists()


def test_number_lists_positional_arguments_and_the_recorded_command(monkeypatch):
    assert cli.parse_numbers(["0", "0.5", "1"], "tau") == (0.0, 0.5, 1.0)
    assert cli.parse_numbers([], "tau") is None
    with pytest.raises(ConfigError, match=r"--tau=abc: give numbers separated by commas"):
        cli.parse_numbers(["abc"], "tau")  # was a ValueError traceback
    cli.reject_arguments(["ncl-analyze"])
    with pytest.raises(ConfigError, match="unexpected arguments extra: this program takes"):
        cli.reject_arguments(["ncl-analyze", "extra"])  # was silently ignored
    import sys
    import types

    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="ncl_jax.analyze")
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", ["/repo/ncl_jax/analyze.py", "--out=a b"])
    assert cli.command_line() == "python -m ncl_jax.analyze '--out=a b'"
    main.__spec__ = None
    monkeypatch.setattr(sys, "argv", ["/venv/bin/ncl-analyze", "--out=x"])
    assert cli.command_line() == "ncl-analyze --out=x"
