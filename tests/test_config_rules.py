"""Config rules held to the config itself: every field with a fixed set of choices, a numeric
range or a type refuses a bad value with one `error:` line naming the field (the tests walk
CHOICES, RANGES and the base config's fields, not a hand-picked list); every field is
classified once for resuming; extending a run to more epochs follows its stated rules.
"""

import json
import logging

import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from ncl_jax.config.base import get_base_config
from ncl_jax.config.resume_rules import MATHS_FIELDS, RUNTIME_FIELDS, resume_differences
from ncl_jax.config.validation import (
    CHOICES,
    RANGES,
    field_types,
    validate_config,
    validate_fields,
)
from ncl_jax.core import optim
from ncl_jax.errors import CheckpointError, ConfigError
from tests.cli_helpers import one_error_line
from tests.tiny import smoke_config

BASE_FIELDS = sorted(traverse_util.flatten_dict(get_base_config().to_dict(), sep="."))


def _set(config, dotted, value):
    *parents, leaf = dotted.split(".")
    node = config
    for part in parents:
        node = node[part]
    node[leaf] = value


def _untyped(config) -> ml_collections.ConfigDict:
    """A copy of a resolved config that accepts any value and new fields (as a config built
    outside ml_collections' type checks, e.g. from JSON, would)."""
    return ml_collections.ConfigDict(config.to_dict(), type_safe=False)


# ------------------------------------------------------------------------------ validation
def test_the_smoke_config_and_the_base_fields_pass():
    validate_fields(smoke_config())
    assert set(field_types()) == set(BASE_FIELDS)
    assert set(CHOICES) <= set(BASE_FIELDS) and set(RANGES) <= set(BASE_FIELDS)


@pytest.mark.parametrize("field", sorted(CHOICES))
def test_every_field_with_choices_refuses_an_unknown_value(capsys, field):
    config = smoke_config()
    _set(config, field, "nosuch")
    line = one_error_line(capsys, lambda: validate_fields(config))
    assert line.startswith(f"error: {field}='nosuch' is unknown; use one of"), line
    for allowed in CHOICES[field]:  # and every allowed value passes this check
        _set(config, field, allowed)
        try:
            validate_fields(config)
        except ConfigError as err:
            assert not str(err).startswith(f"{field}="), err


def _outside(bounds) -> list:
    """Values just outside a range, from its declared bounds (the open ends included)."""
    values = []
    if bounds.low is not None:
        values += [bounds.low - 1, bounds.low - 2] + ([bounds.low] if bounds.low_open else [])
    if bounds.high is not None:
        values += [bounds.high + 1] + ([bounds.high] if bounds.high_open else [])
    return [v for v in values if v not in bounds.special]


@pytest.mark.parametrize("field", sorted(RANGES))
def test_every_field_with_a_range_refuses_values_outside_it(capsys, field):
    kind = field_types()[field]
    bad_values = _outside(RANGES[field])
    assert bad_values, field
    for bad in bad_values:
        value = kind.kind(bad)
        config = smoke_config()
        _set(config, field, (value,) if kind.is_tuple else value)
        line = one_error_line(capsys, lambda config=config: validate_fields(config))
        assert line.startswith(f"error: {field}=") and "out of range; it must be" in line, line


_WRONG = {str: 3, int: "x", float: "x", bool: "yes"}


@pytest.mark.parametrize("field", BASE_FIELDS)
def test_every_field_refuses_a_value_of_the_wrong_type(capsys, field):
    kind = field_types()[field]
    config = _untyped(smoke_config())
    _set(config, field, (_WRONG[kind.kind],) if kind.is_tuple else _WRONG[kind.kind])
    line = one_error_line(capsys, lambda: validate_fields(config))
    assert line.startswith(f"error: {field}=") and f"must be {kind}" in line, line


def test_an_unknown_field_is_named_with_its_path_and_the_nearest_fields(capsys):
    config = _untyped(smoke_config())
    config.optim.lrr = 0.1
    line = one_error_line(capsys, lambda: validate_fields(config))
    assert line.startswith(
        "error: optim.lrr is not a config field; did you mean optim.learning_rate?"
    ), line


@pytest.mark.parametrize("batch_size", [0, -16])
def test_a_batch_size_below_one_is_out_of_range_not_a_device_split(capsys, batch_size):
    """Reported: batch_size 0 and -16 were refused as 'does not split over 2 devices'."""
    config = smoke_config(batch_size=batch_size)
    line = one_error_line(capsys, lambda: validate_config(config, num_devices=2))
    assert line == f"error: batch_size={batch_size} is out of range; it must be >= 1.", line


# ------------------------------------------------------------------------------ resume rules
def test_every_field_is_classified_exactly_once():
    classified = MATHS_FIELDS + RUNTIME_FIELDS
    assert len(classified) == len(set(classified)), "a field is listed twice"
    assert sorted(classified) == BASE_FIELDS


def test_resume_differences_split_by_role_and_unknown_fields_count_as_maths():
    saved = {"cpu_devices": -1, "batch_size": 16, "old_field": 1}
    current = {"cpu_devices": 1, "batch_size": 32}
    assert resume_differences(saved, current) == (["batch_size", "old_field"], ["cpu_devices"])


def test_a_recorded_pipeline_is_kept_and_an_older_runs_auto_accepts_the_choice_made_now():
    assert resume_differences({"dataset.pipeline": "tfdata"}, {"dataset.pipeline": "device"}) == (
        ["dataset.pipeline"],
        [],
    )
    for now in ("tfdata", "device"):
        assert resume_differences({"dataset.pipeline": "auto"}, {"dataset.pipeline": now}) == (
            [],
            [],
        )


@pytest.fixture
def finished_run(tmp_path):
    """A workdir as a finished 2-epoch smoke run leaves it: config.json, one checkpoint (a
    stand-in state: the config guard does not read it) and result.json."""
    from ncl_jax.training.checkpointing import RunCheckpoints

    def make(**overrides):
        workdir = tmp_path / "run"
        checkpoints = RunCheckpoints(str(workdir))
        checkpoints.check_or_write_config(smoke_config(**overrides))
        checkpoints.save("checkpoints", 6, {"w": np.zeros(2, np.float32)}, {"epoch": 2})
        checkpoints.wait()
        checkpoints.close()
        (workdir / "result.json").write_text('{"step": 6}')
        return workdir

    return make


def _check(workdir, config, **kwargs):
    from ncl_jax.training.checkpointing import RunCheckpoints

    checkpoints = RunCheckpoints(str(workdir))
    try:
        checkpoints.check_or_write_config(config, **kwargs)
    finally:
        checkpoints.close()


def test_runtime_only_changes_are_accepted_and_logged(finished_run, caplog):
    """Reported: --config.cpu_devices=1 on a run saved with -1 was refused."""
    workdir = finished_run()
    recorded = (workdir / "config.json").read_text()
    with caplog.at_level(logging.WARNING):
        _check(workdir, smoke_config(cpu_devices=1, log_every_steps=7))
    assert "runtime-only changes" in caplog.text
    assert "cpu_devices: -1 -> 1" in caplog.text and "log_every_steps: 1 -> 7" in caplog.text
    assert (workdir / "config.json").read_text() == recorded


def test_a_maths_change_is_refused_naming_only_the_maths_fields(finished_run):
    workdir = finished_run()
    with pytest.raises(CheckpointError, match="different config") as err:
        _check(workdir, smoke_config(cpu_devices=1, **{"loss.distill_weight": 0.5}))
    assert "loss.distill_weight: 0.6 -> 0.5" in str(err.value)
    assert "cpu_devices" not in str(err.value)


def test_more_epochs_without_the_extension_step_are_refused_pointing_to_it(finished_run):
    """Reported: --config.num_epochs=3 on a finished 2-epoch run said only 'use a new
    --workdir'."""
    workdir = finished_run()
    with pytest.raises(CheckpointError, match=r"num_epochs: 2 -> 3.*--extend_to_epochs=N"):
        _check(workdir, smoke_config(num_epochs=3))


def test_extending_a_warmup_multistep_run_records_the_new_length_and_keeps_the_old_result(
    finished_run,
):
    workdir = finished_run()
    _check(workdir, smoke_config(num_epochs=3), extend=True)
    assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 3
    assert not (workdir / "result.json").exists()
    assert (workdir / "set_aside" / "result.json").read_text() == '{"step": 6}'
    # The same command again (after a kill): already extended, a plain resume.
    _check(workdir, smoke_config(num_epochs=3), extend=True)
    _check(workdir, smoke_config(num_epochs=3))
    assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 3


def test_shortening_or_changing_other_maths_fields_is_refused(finished_run):
    workdir = finished_run()
    with pytest.raises(ConfigError, match=r"--extend_to_epochs=1 must be more than .*=2"):
        _check(workdir, smoke_config(num_epochs=1), extend=True)
    with pytest.raises(CheckpointError, match=r"seed: 42 -> 1"):
        _check(workdir, smoke_config(num_epochs=3, seed=1), extend=True)
    assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 2
    assert (workdir / "result.json").exists()


def test_extending_a_cosine_run_is_refused_with_the_reason(finished_run):
    workdir = finished_run(**{"optim.schedule": "cosine"})
    with pytest.raises(ConfigError, match="optim.schedule='cosine' sets the rate of every epoch"):
        _check(workdir, smoke_config(num_epochs=3, **{"optim.schedule": "cosine"}), extend=True)
    assert json.loads((workdir / "config.json").read_text())["num_epochs"] == 2


def test_extending_a_workdir_without_checkpoints_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="has no checkpoints to extend"):
        _check(tmp_path / "fresh", smoke_config(num_epochs=3), extend=True)
    assert not (tmp_path / "fresh" / "config.json").exists()


@pytest.mark.parametrize("schedule", optim.SCHEDULES)
def test_the_extension_rule_matches_each_schedule(schedule):
    """An extended run trains its first epochs at the rates it had iff the schedule is not
    LENGTH_DEPENDENT: the per-epoch rates of a 2-epoch and a 5-epoch schedule compared."""
    o = smoke_config(**{"optim.schedule": schedule}).optim
    rates = {
        n: np.asarray(optim.make_schedule(o, steps_per_epoch=3, num_epochs=n)(np.arange(6)))
        for n in (2, 5)
    }
    faithful = np.array_equal(rates[2], rates[5])
    assert faithful == (schedule not in optim.LENGTH_DEPENDENT_SCHEDULES)
