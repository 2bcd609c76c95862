#!/usr/bin/env bash
# The prepared accelerator check (ncl_jax/device_check.py): times the NCL train step over a
# grid of shapes within a wall-time budget and writes OUT_DIR/device_check.{json,md}.
#   bash launch/device_check.sh OUT_DIR [--grid=auto|full|reduced] [--budget_s=420] [--overwrite]
# On a CPU-only host `auto` runs the reduced grid (under a minute). PYTHON selects the
# interpreter (default: this checkout's .venv/bin/python if present, else python on PATH). The device image lacks
# ml_collections: when it cannot be imported, the pure-Python wheels in .device_wheels/ are
# put on PYTHONPATH (Python imports pure wheels as zip files); prepare them with
#   pip download --no-deps -d .device_wheels ml-collections==1.1.0
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [--grid=auto|full|reduced] [--budget_s=S] [--overwrite]}
shift
case $out in
  /*) ;;
  *) out="$PWD/$out" ;;  # relative to the caller's directory, before the cd below
esac
command_line="launch/device_check.sh $out${*:+ $*}"
cd "$(dirname "$0")/.."
# The interpreter: $PYTHON, else this checkout's .venv, else python / python3 on PATH.
if [ -n "${PYTHON:-}" ]; then python=$PYTHON
elif [ -x .venv/bin/python ]; then python=$PWD/.venv/bin/python
else python=$(command -v python || command -v python3)
fi
if ! "$python" -c "import jax" 2>/dev/null; then
  echo "error: $python cannot import jax; set PYTHON=/path/to/the/venv/bin/python" \
    "(the environment with jax, flax, optax and orbax)." >&2
  exit 2
fi
if ! "$python" -c "import ml_collections" 2>/dev/null; then
  shopt -s nullglob
  wheels=(.device_wheels/*.whl)
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "error: ml_collections is not installed and .device_wheels/ holds no wheel; run" \
      "pip download --no-deps -d .device_wheels ml-collections==1.1.0 first." >&2
    exit 2
  fi
  for wheel in "${wheels[@]}"; do
    PYTHONPATH="$PWD/$wheel${PYTHONPATH:+:$PYTHONPATH}"
  done
  export PYTHONPATH
fi
# As launch/local_gpus.sh: let the allocator grow as training does (no 75% up-front grab).
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export NCL_DEVICE_CHECK_COMMAND="$command_line"
exec "$python" -m ncl_jax.device_check --out="$out" "$@"
