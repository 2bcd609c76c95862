"""ncl_jax: Nested Collaborative Learning (CVPR 2022) for long-tailed recognition in JAX/Flax.

The modules at this level are the programs (`python -m ncl_jax.<program>`, console scripts
`ncl-*`): flags and a `main` over the library, which lives in one folder per role, each
importing only the folders below it:
  core/        the method: losses, MoCo, state, train and eval steps, optimiser, metrics
  models/      backbones, heads, the stacked K experts, pretrained weights
  data/        long-tailed datasets and input pipelines
  config/      fields, paper/official presets (resolved once per program), checks, builders
  evaluation/  scoring a model: per-class counts, the analysis pass, figures
  training/    the loop, checkpoints, saved runs, sweeps
  analysis/    runs read back into analyses, reports and curves
  deploy/      one expert exported, and a TensorFlow-free predictor
  perf/        benchmark, memory fit, the accelerator check
docs/design.md maps every module.
"""

import os

__version__ = "0.1.0"

# TensorFlow (host-side input pipelines only) prints C++ INFO notices at import, which would
# bury the one-line errors; warnings and errors still show. An explicit setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
