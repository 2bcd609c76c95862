"""CIFAR-10-LT, ResNet-32, K=3 experts (paper Table 1).

  python -m ncl_jax.main --config=configs/cifar10_lt.py:if100 --workdir=runs/c10_if100
  # offline copy of CIFAR-10 (TFDS_DATA_DIR holding cifar10_jpeg):
  python -m ncl_jax.main --config=configs/cifar10_lt.py:if100 --workdir=runs/c10 \\
      --config.dataset.name=cifar10_jpeg

Arguments: `if100` (default) | `if50`; `paper` (default) | `official`; `contrastive`;
`quick`: a short first run on a CPU (see ncl_jax/config/recipes.quick); `ablation=NAME`,
`ce`, `noaug`: the paper's baselines and ablations (ncl_jax/config/experiments.py), e.g.
`if100,ablation=baseline`
for Table 1's BSCE baseline (84.0 at IF100, 85.8 at IF50).
Paper top-1, single / ensemble: IF100 84.7 / 85.5, IF50 86.8 / 87.3.
The official repo has no CIFAR-10 config: this uses the CIFAR-100 recipe with beta = 0.3
(3 hard negatives in the paper form; HCM_N = 3, i.e. 2 negatives, in the official form).
"""

from ncl_jax.config.recipes import cifar_config


def get_config(arg: str | None = None):
    return cifar_config(arg, name="cifar10", num_classes=10)
