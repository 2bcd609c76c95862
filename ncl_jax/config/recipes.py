"""The recipes that config files share: their argument parsing, the choice of variant, the
CIFAR-LT recipe (cifar10_lt.py, cifar100_lt.py) and the 224-pixel one (ImageNet-LT,
iNaturalist 2018, Places-LT). Config files in `configs/` import only from here and
`ncl_jax.config.base`."""

from __future__ import annotations

import difflib
import importlib.util
import os

import ml_collections

from ncl_jax.config.base import get_base_config
from ncl_jax.config.experiments import ARG_FLAGS, apply_experiment
from ncl_jax.config.variants import VARIANTS, check_variant
from ncl_jax.errors import ConfigError


def apply_variant(
    config: ml_collections.ConfigDict, variant: str, *, file_presets: bool = False
) -> ml_collections.ConfigDict:
    """Chooses the variant. The fields it presets stay None here and are filled by
    `ncl_jax.config.variants.resolve_config` after all overrides. file_presets=True records that the
    calling config file also set fields from `variant` itself, so that a later change of
    `variant` is refused instead of half applied."""
    check_variant(variant)
    config.variant = variant
    config.preset_variant = variant if file_presets else ""
    return config


def parse_args(
    arg: str | None, *, keys: tuple[str, ...] = (), imbalance: bool = False
) -> dict[str, str]:
    """Parses a config arg such as "if50,official,ablation=nil" into {"if": "50", "variant":
    "official", "ablation": "nil"}; other plain tokens are joined under "flags". A key=value
    token whose key is not in `keys`, or ifN without `imbalance`, is refused (ValueError),
    never ignored."""
    out: dict[str, str] = {}
    for token in filter(None, (arg or "").replace(":", ",").split(",")):
        if "=" in token:
            key, value = token.split("=", 1)
            if key not in keys:
                raise ValueError(
                    f"unknown config arg {token!r}; this config takes "
                    f"{', '.join(k + '=...' for k in keys) or 'no key=value arguments'}."
                )
            out[key] = value
        elif token in VARIANTS:
            out["variant"] = token
        elif token.startswith("if") and token[2:].replace(".", "", 1).isdigit():
            if not imbalance:
                raise ValueError(
                    f"unknown config arg {token!r}: this dataset is long-tailed as published "
                    "(only the CIFAR configs take ifN); set --config.dataset.imbalance_factor."
                )
            out["if"] = token[2:]
        else:
            out.setdefault("flags", "")
            out["flags"] += ("," if out["flags"] else "") + token
    return out


def cifar_config(arg: str | None, *, name: str, num_classes: int):
    args = parse_args(arg, keys=("ablation",), imbalance=True)
    flags = set(filter(None, args.get("flags", "").split(",")))
    unknown = flags - {"contrastive", "quick", *ARG_FLAGS}
    if unknown:
        known = ["paper", "official", "contrastive", "quick", *ARG_FLAGS]
        close = [m for u in sorted(unknown) for m in difflib.get_close_matches(u, known, n=1)]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(
            f"unknown config args {sorted(unknown)}{hint}; use ifN, paper|official, "
            "contrastive, quick, ablation=NAME, ce, noaug (ncl_jax/config/experiments.py)."
        )
    c = get_base_config()
    c.dataset.name = name
    c.dataset.num_classes = num_classes
    c.dataset.imbalance_factor = float(args.get("if", 100))
    variant = args.get("variant", "paper")
    apply_variant(c, variant, file_presets=True)
    # Paper: RandAugment (Sec. 4.2); official: AutoAugment CIFAR10Policy + Cutout.
    c.dataset.train_view = "cifar_randaugment" if variant == "paper" else "cifar_autoaugment"
    # Official CIFAR NCL.yaml trains without self-supervision; "contrastive" picks the
    # *_NCL_with_contrastive.yaml recipe (MoCo K=1024, dim 64, T=0.2, m=0.999).
    c.moco.enabled = variant == "paper" or "contrastive" in flags
    apply_experiment(c, ablation=args.get("ablation"), flags=flags)
    if "quick" in flags:
        quick(c)
    return c


def quick(c):
    """A first run on a CPU in minutes: ResNet-8 experts, 4 epochs; far from paper accuracy."""
    c.model.depth = 1
    c.batch_size = 64
    c.num_epochs = 4
    c.optim.warmup_epochs = 1
    c.optim.milestones = (3,)
    c.moco.queue_size = 1024
    c.eval_batch_size = 1000
    c.log_every_steps = 10
    c.checkpoint_every_epochs = 1


def large_image_config(
    *, name: str, num_classes: int, view: str, normalization: str, backbone: str
):
    """Cosine classifier, streamed data, 224-px views, the official MoCo size (queue 65,536 of
    1,024-d keys, used by the official Places config; the paper gives none for the others)."""
    c = get_base_config()
    d = c.dataset
    d.name = name
    d.num_classes = num_classes
    d.imbalance_factor = 0.0  # these datasets are long-tailed as published
    d.image_size = 224
    d.train_view = view
    d.key_view = view
    d.eval_view = "resize_center_crop"
    d.normalization = normalization
    d.cache = False
    c.model.backbone = backbone
    c.model.classifier = "cosine"
    c.model.cos_scale = 16.0
    c.eval_batch_size = 512
    c.moco.queue_size = 65536
    c.moco.dim = 1024
    c.log_every_steps = 100
    return c


# The checkout's folder of config files (absent when the package is installed without one).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "configs")


def checkout_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """configs/<name>.py of this checkout with `arg`, unresolved: for the tools that time or
    project the paper's recipes (the device check). Raises ConfigError when the package runs
    without its checkout's configs/ folder."""
    path = os.path.join(CONFIGS_DIR, f"{name}.py")
    if not os.path.isfile(path):
        raise ConfigError(
            f"{path} does not exist: this tool reads the recipes in the configs/ folder of an "
            "ncl_jax checkout; run it from a checkout (pip install -e .)."
        )
    return load_config(path + (f":{arg}" if arg else ""))


def load_config(spec: str) -> ml_collections.ConfigDict:
    """The config of a config file given as on the command line, `PATH[:ARG]` (e.g.
    `configs/cifar10_lt.py:quick`), as `--config=PATH[:ARG]` builds it before overrides: for
    notebooks, tests and tools that start from a config file without flags. Unresolved.
    Raises FileNotFoundError for a missing file."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} does not exist.")
    name = "ncl_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)
