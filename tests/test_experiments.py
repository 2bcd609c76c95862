"""Every named experiment (ncl_jax/config/experiments.py) trains the loss it names: one step
of a tiny model per ablation, its total loss recomposed from the logged terms and the ablation's
weights."""

import jax
import numpy as np
import pytest

from ncl_jax.config import builders
from ncl_jax.config.experiments import ABLATIONS
from ncl_jax.config.variants import resolve_config
from ncl_jax.core.train_step import pmap_train_step, replicate
from tests.tiny import IMAGE, class_counts, config_file, global_batch, shard

# (NIL-hard, BOD_all, BOD_hard, SS, experts): what each ablation keeps of NCL.
EXPECTED = {
    "baseline": (0, 0, 0, False, 1),
    "independent": (0, 0, 0, False, 3),
    "nil": (1, 0, 0, False, 3),
    "ss": (0, 0, 0, True, 3),
    "nil_bod_all": (1, 0.6, 0, False, 3),
    "nil_nbod": (1, 0.6, 0.6, False, 3),
    "ncl": (1, 0.6, 0.6, True, 3),
    "nod": (1, 0.6, 0.6, True, 3),
}


def _tiny(arg):
    get_config = lambda arg=None: config_file("cifar10_lt", arg)
    config = get_config(arg)
    config.dataset.image_size = IMAGE
    config.model.width = 4
    config.model.depth = 1
    config.moco.dim = 8
    config.moco.queue_size = 32
    config.batch_size = 16
    return resolve_config(config)


def test_the_table_covers_every_named_experiment():
    assert set(EXPECTED) == set(ABLATIONS)


@pytest.mark.parametrize("name", sorted(ABLATIONS))
@pytest.mark.parametrize("ce", [False, True], ids=["bsce", "ce"])
def test_named_experiment_sets_exactly_its_fields(name, ce):
    config = _tiny(f"if100,ablation={name}" + (",ce" if ce else ""))
    nil_hard, bod_all, bod_hard, ss, experts = EXPECTED[name]
    assert (config.loss.nil_hard_weight, config.loss.distill_weight) == (nil_hard, bod_all)
    assert (config.loss.hard_distill_weight, config.moco.enabled) == (bod_hard, ss)
    assert config.model.num_experts == experts and config.loss.balanced is not ce
    assert config.loss.distill_balanced is (name != "nod")


@pytest.mark.slow  # one compiled step per experiment; these three cover every term switch
@pytest.mark.parametrize("name", ["baseline", "nil_bod_all", "ncl"])
def test_named_experiment_trains_exactly_its_terms(name):
    config = _tiny(f"if100,ablation={name}" + (",ce" if name == "nil" else ""))
    nil_hard, bod_all, bod_hard, ss, experts = EXPECTED[name]
    cfg = builders.make_step_config(config, class_counts=class_counts(), steps_per_epoch=4)
    state = builders.create_state(config, cfg)
    step = pmap_train_step(cfg, donate=False, devices=jax.local_devices()[:1])
    _, metrics = step(replicate(state, jax.local_devices()[:1]), shard(global_batch(16), 1))
    mean = {
        k: float(v[..., 0].sum() / v[..., 1].sum())
        for k, v in metrics.items()
        if k != "first_nonfinite_step"
    }
    assert ("moco" in mean) is ss
    assert sum(k.startswith("accuracy/expert_") for k in mean) == experts
    recomposed = (
        mean["nil_all"]
        + nil_hard * mean["nil_hard"]
        + bod_all * mean["nbod_all"]
        + bod_hard * mean["nbod_hard"]
        + mean.get("moco", 0.0)
    )
    np.testing.assert_allclose(mean["loss"], recomposed, rtol=1e-5)
    if experts == 1:
        assert mean["nbod_all"] == 0.0


def test_noaug_uses_the_standard_cifar_view():
    assert _tiny("if100,noaug").dataset.train_view == "cifar_standard"
    with pytest.raises(ValueError, match="ablation='nill' is unknown"):
        _tiny("if100,ablation=nill")
