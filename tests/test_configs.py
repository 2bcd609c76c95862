"""Every config file and argument loads, validates, and sets the recipe its docstring states."""

import pytest

from ncl_jax.config.base import get_base_config
from ncl_jax.config.recipes import apply_variant
from ncl_jax.config.validation import CHOICES, validate_config
from ncl_jax.config.variants import resolve_config
from ncl_jax.errors import ConfigError
from tests.tiny import config_file

# (file, arg) -> (variant, num_hard, moco, epochs, train view)
EXPECTED = {
    ("cifar100_lt", "if100"): ("paper", 30, True, 400, "cifar_randaugment"),
    ("cifar100_lt", "if50,official"): ("official", 29, False, 400, "cifar_autoaugment"),
    ("cifar100_lt", "official,contrastive"): ("official", 29, True, 400, "cifar_autoaugment"),
    ("cifar10_lt", "if100"): ("paper", 3, True, 400, "cifar_randaugment"),
    ("cifar10_lt", "quick"): ("paper", 3, True, 4, "cifar_randaugment"),
    ("imagenet_lt", "resnext50"): ("paper", 300, True, 400, "imagenet_randaugment"),
    ("imagenet_lt", "official"): ("official", 299, False, 200, "imagenet_randaugment"),
    ("inat2018", ""): ("paper", 2443, True, 400, "imagenet_randaugment"),
    ("inat2018", "official"): ("official", 2441, False, 400, "imagenet_randaugment"),
    ("places_lt", ""): ("paper", 110, True, 30, "places_sim"),
    ("places_lt", "official"): ("official", 121, True, 30, "places_sim"),
    ("smoke", ""): ("paper", 3, True, 2, "cifar_standard"),
}


@pytest.mark.parametrize("name, arg", list(EXPECTED))
def test_config_files(name, arg):
    config = resolve_config(config_file(name, arg))
    validate_config(config, num_devices=8)
    variant, num_hard, moco, epochs, view = EXPECTED[(name, arg)]
    assert (
        config.variant,
        config.loss.num_hard,
        config.moco.enabled,
        config.num_epochs,
        config.dataset.train_view,
    ) == (variant, num_hard, moco, epochs, view)
    assert config.moco.ema_repeats == (1 if variant == "paper" else config.model.num_experts)


def test_imagenet_official_recipe_and_cifar_if_argument():
    config = config_file("imagenet_lt", "official")
    assert (config.optim.schedule, config.optim.learning_rate) == ("cosine", 0.2)
    assert config_file("cifar10_lt", "if50").dataset.imbalance_factor == 50.0


def test_unknown_argument_and_variant_are_refused():
    with pytest.raises(ValueError, match="unknown config args"):
        config_file("cifar100_lt", "if100,fast")
    with pytest.raises(ValueError, match="variant='papr'"):
        apply_variant(get_base_config(), "papr")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model.num_experts", 0, "num_experts=0"),
        ("batch_size", 60, "batch_size=60"),
        ("moco.queue_size", 100, "moco.queue_size=100"),
        ("loss.num_hard", 100, "loss.num_hard"),
        ("model.expert_strategy", "scan", "expert_strategy='scan'"),
        ("cpu_devices", 0, "cpu_devices=0"),
        ("dataset.imbalance_factor", 0.5, "imbalance_factor=0.5"),
    ],
)
def test_inconsistent_values_fail_validation(field, value, message):
    config = get_base_config()
    section, _, key = field.rpartition(".")
    (config[section] if section else config)[key] = value
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate_config(resolve_config(config), num_devices=8)


def test_validation_refuses_an_unresolved_config_naming_the_field():
    with pytest.raises(ConfigError, match="loss.hard_probs is None: this config was not resolved"):
        validate_config(get_base_config(), num_devices=8)


def test_resolved_config_is_locked():
    config = resolve_config(get_base_config())
    with pytest.raises(AttributeError):
        config.loss.new_weight = 1.0


def test_every_preset_is_an_allowed_value_of_its_field():
    from ncl_jax.config.variants import PRESETS

    for field, values in PRESETS.items():
        if field in CHOICES:
            assert set(values) <= set(CHOICES[field]), field


@pytest.mark.parametrize(
    "name, arg",
    [
        ("imagenet_lt", "resnet50,ablation=nil"),
        ("places_lt", "ablation=nil"),
        ("inat2018", "ablation=nil"),
        ("smoke", "ablation=nil"),
        ("smoke", "quick"),
        ("cifar10_lt", "if100,ablaton=nil"),
        ("smoke", "if50"),
        ("imagenet_lt", "resnet50,if10"),
        ("inat2018", "if50"),
    ],
)
def test_arguments_a_config_does_not_take_are_refused(name, arg):
    with pytest.raises(ValueError, match="unknown config arg"):
        config_file(name, arg)
