#!/usr/bin/env bash
# One node, all its GPUs: one process, pmap over the local devices.
#   launch/local_gpus.sh configs/cifar100_lt.py:if100 runs/c100 [--config.x=y ...]
#   CUDA_VISIBLE_DEVICES=0,1 launch/local_gpus.sh configs/imagenet_lt.py runs/inlt ...
# The global batch (config.batch_size) is split over the visible GPUs.
set -euo pipefail
config=${1:?usage: $0 CONFIG[:ARGS] WORKDIR [--config.overrides...]}
workdir=${2:?usage: $0 CONFIG[:ARGS] WORKDIR [--config.overrides...]}
shift 2
cd "$(dirname "$0")/.."
# Let JAX use GPU memory as it needs it, next to the host-side tf.data pipeline.
# Refuse to fall back to the CPU when the GPU build of JAX is missing (requirements-gpu.txt).
export NCL_REQUIRE_PLATFORM=${NCL_REQUIRE_PLATFORM:-gpu}
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
exec "${PYTHON:-python}" -m ncl_jax.main --config="$config" --workdir="$workdir" "$@"
