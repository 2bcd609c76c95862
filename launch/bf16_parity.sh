#!/usr/bin/env bash
# bfloat16 parity: the quick CIFAR-10-LT run of the README in float32 and in bfloat16 (same
# seed), then the comparison of their logged curves and final accuracies.
#   bash launch/bf16_parity.sh OUT_DIR [--config.dataset.name=cifar10_jpeg ...]
# Extra arguments go to both training runs (e.g. the offline dataset name). PYTHON selects the
# interpreter (default: this checkout's .venv/bin/python if present, else python on PATH).
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [--config.x=v ...]}
shift
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then python=$PYTHON
elif [ -x .venv/bin/python ]; then python=$PWD/.venv/bin/python
else python=$(command -v python || command -v python3)
fi
for dtype in float32 bfloat16; do
  "$python" -m ncl_jax.main --config=configs/cifar10_lt.py:if100,quick \
    --config.model.dtype="$dtype" --workdir="$out/$dtype" "$@"
done
"$python" -m ncl_jax.curves "$out/float32" "$out/bfloat16" \
  --tags=train/loss,train/nil_all,train/moco --plot="$out/loss.png"
