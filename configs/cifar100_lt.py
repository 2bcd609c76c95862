"""CIFAR-100-LT, ResNet-32, K=3 experts (paper Table 1).

  python -m ncl_jax.main --config=configs/cifar100_lt.py:if100,paper --workdir=runs/c100_if100
  python -m ncl_jax.main --config=configs/cifar100_lt.py:if50,official --workdir=runs/c100_if50

Arguments (comma separated): `if100` (default) | `if50` | `if<N>`; `paper` (default) |
`official`; `contrastive` (official only: the released `*_NCL_with_contrastive.yaml`, MoCo on);
`quick` (a short CPU run, ncl_jax/config/recipes.quick); `ablation=NAME`, `ce`, `noaug`:
the baselines and ablations of Tables 4-5 and Fig. 6a, with their paper numbers
(ncl_jax/config/experiments.py).
Paper top-1, single expert / ensemble: IF100 53.3 / 54.2, IF50 56.8 / 58.2.
Recipe (official yaml): batch 64, SGD 0.1 nesterov, wd 2e-4, 5-epoch warm-up, x0.1 at epochs
320 and 360, 400 epochs; beta = 0.3 (30 hard negatives; official HCM_N = 30 incl. the label).
"""

from ncl_jax.config.recipes import cifar_config


def get_config(arg: str | None = None):
    return cifar_config(arg, name="cifar100", num_classes=100)
