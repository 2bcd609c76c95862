#!/usr/bin/env bash
# Cloud TPU VM pod slice: the same command on every worker; JAX finds its peers itself.
#   TPU_NAME=my-v4-32 ZONE=us-central2-b launch/tpu_pod.sh \
#       configs/imagenet_lt.py:resnet50 gs://my-bucket/runs/inlt [--config.x=y ...]
# Prerequisites on every worker (once): the repository at ~/ncl_jax and
#   pip install -r requirements-tpu.txt -e .
# Use a gs:// workdir (Orbax writes checkpoints there collectively) and data that every
# worker reads, e.g. --config.dataset.data_dir=gs://my-bucket/tensorflow_datasets.
set -euo pipefail
config=${1:?usage: $0 CONFIG[:ARGS] WORKDIR [--config.overrides...]}
workdir=${2:?usage: $0 CONFIG[:ARGS] WORKDIR [--config.overrides...]}
shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
extra=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command="
  cd ~/ncl_jax && NCL_REQUIRE_PLATFORM=tpu python -m ncl_jax.main --config='$config' --workdir='$workdir' \
      --distributed=on $extra"
