#!/usr/bin/env bash
# One paper CIFAR row on an accelerator without TensorFlow: the prepared cache of its
# long-tailed subset (ncl_jax/data/cache.py), held on the device and augmented there
# (dataset.pipeline=device). docs/data.md, "Training without TensorFlow", lists the rows,
# how to write each cache and how to project the wall time.
#   bash launch/paper_cifar_device.sh CONFIG CACHE WORKDIR [--config.FIELD=VALUE ...]
# e.g.
#   bash launch/paper_cifar_device.sh configs/cifar10_lt.py:if100 \
#       data/cifar10_lt_if100.npz runs/c10_if100
# CONFIG, CACHE and WORKDIR are relative to the caller's directory. PYTHON and the device
# wheels: launch/device_python.sh.
set -euo pipefail
usage="usage: $0 CONFIG CACHE WORKDIR [--config.FIELD=VALUE ...]"
config=${1:?$usage}
cache=${2:?$usage}
workdir=${3:?$usage}
shift 3
absolute() { case $1 in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
config=$(absolute "$config")
cache=$(absolute "$cache")
workdir=$(absolute "$workdir")
cd "$(dirname "$0")/.."
source launch/device_python.sh  # $python, the device wheels, the allocator settings
exec "$python" -m ncl_jax.main --config="$config" --workdir="$workdir" \
  --config.dataset.source=cache --config.dataset.cache_path="$cache" \
  --config.dataset.pipeline=device "$@"
