"""Variant presets and derived fields are resolved once, after every command-line override
(ncl_jax.config.variants); the resolved config is what config.json records."""

import pytest
from absl import flags
from ml_collections import config_flags

from ncl_jax import cli
from ncl_jax.config.variants import PRESETS, VARIANTS, resolve_config
from ncl_jax.errors import ConfigError


def _load(*args):
    """The config as the training CLI builds it from `args` (file, then overrides)."""
    argv = ["ncl-train", *args]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values, sys_argv=argv)
    cli.parse_flags(argv, values)
    return values.config


def test_variant_changed_on_the_command_line_is_refused_with_the_way_to_choose_it():
    """Reported: `:if100 --config.variant=official` trained the paper's losses while
    config.json said official."""
    config = _load("--config=configs/cifar100_lt.py:if100", "--config.variant=official")
    with pytest.raises(ConfigError, match=r"append ,official to it"):
        resolve_config(config)


def test_official_ema_repeats_follow_an_overridden_number_of_experts():
    """Reported: `:if100,official --config.model.num_experts=4` kept ema_repeats=3."""
    config = _load("--config=configs/cifar100_lt.py:if100,official", "--config.model.num_experts=4")
    assert resolve_config(config).moco.ema_repeats == 4


@pytest.mark.parametrize("ratio, num_hard", [(0.1, 9), (0.3, 29), (0.5, 49)])
def test_official_num_hard_follows_an_overridden_hard_ratio(ratio, num_hard):
    """Reported: `:if100,official --config.loss.hard_ratio=0.5` kept num_hard=29, so a beta
    sweep trained beta=0.3 every time. Official HCM_N = int(beta C) counts the label."""
    config = _load(
        "--config=configs/cifar100_lt.py:if100,official", f"--config.loss.hard_ratio={ratio}"
    )
    assert resolve_config(config).loss.num_hard == num_hard


def test_paper_num_hard_follows_hard_ratio_and_an_explicit_num_hard_wins():
    config = _load("--config=configs/cifar100_lt.py:if100", "--config.loss.hard_ratio=0.5")
    assert resolve_config(config).loss.num_hard == 50
    config = _load(
        "--config=configs/cifar100_lt.py:if100",
        "--config.loss.hard_ratio=0.5",
        "--config.loss.num_hard=7",
    )
    assert resolve_config(config).loss.num_hard == 7


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_preset_is_filled_and_an_explicit_override_wins(variant):
    config = _load(f"--config=configs/smoke.py:{variant}", "--config.loss.hard_probs=restricted")
    resolved = resolve_config(config)
    index = VARIANTS.index(variant)
    for dotted, values in PRESETS.items():
        section, _, leaf = dotted.rpartition(".")
        node = resolved[section] if section else resolved
        expected = "restricted" if dotted == "loss.hard_probs" else values[index]
        assert node[leaf] == expected, dotted
    assert resolve_config(resolved).to_dict() == resolved.to_dict()  # idempotent


def test_smoke_config_has_no_file_presets_so_its_variant_may_change_later():
    config = _load("--config=configs/smoke.py", "--config.variant=official")
    assert resolve_config(config).loss.hard_probs == "masked_logits"


def test_unknown_variant_is_one_config_error():
    config = _load("--config=configs/smoke.py", "--config.variant=officail")
    with pytest.raises(ConfigError, match="variant='officail' is unknown"):
        resolve_config(config)


def test_training_records_the_resolved_config(tmp_path):
    import json

    from ncl_jax.config.validation import validate_config
    from ncl_jax.training.checkpointing import RunCheckpoints

    config = _load("--config=configs/cifar100_lt.py:if100,official", "--config.loss.hard_ratio=0.5")
    resolved = resolve_config(config)
    validate_config(resolved, num_devices=8)
    RunCheckpoints(str(tmp_path)).check_or_write_config(resolved)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["loss"]["num_hard"] == 49 and saved["moco"]["ema_repeats"] == 3
    assert saved["loss"]["hard_probs"] == "masked_logits"


def test_a_config_written_before_the_new_fields_evaluates_and_resumes_as_trained():
    """Older config.json files lack loss.balanced, loss.distill_balanced,
    loss.nil_hard_weight, model.bn_unbiased_variance and preset_variant: they resolve to the
    values those runs were trained with, and resuming them is not refused."""
    import ml_collections

    from ncl_jax.training.run_files import config_differences, config_to_dict

    current = resolve_config(
        _load(
            "--config=configs/cifar100_lt.py:if100,official",
            "--config.model.bn_unbiased_variance=False",
        )
    )
    saved = config_to_dict(current)
    for section, field in [
        ("loss", "balanced"),
        ("loss", "distill_balanced"),
        ("loss", "nil_hard_weight"),
        ("model", "bn_unbiased_variance"),
    ]:
        del saved[section][field]
    del saved["preset_variant"]
    old = resolve_config(ml_collections.ConfigDict(saved))
    assert old.loss.balanced and old.loss.nil_hard_weight == 1.0
    assert old.model.bn_unbiased_variance is False  # legacy value, not the official preset
    assert config_differences(saved, config_to_dict(current)) == []
