#!/usr/bin/env bash
# The prepared accelerator check (ncl_jax/device_check.py): times the NCL train step over a
# grid of shapes within a wall-time budget and writes OUT_DIR/device_check.{json,md}.
#   bash launch/device_check.sh OUT_DIR [--grid=auto|full|reduced] [--budget_s=420] [--overwrite]
# On a CPU-only host `auto` runs the reduced grid (under a minute). PYTHON selects the
# interpreter (default: this checkout's .venv/bin/python if present, else python on PATH). The device image lacks
# ml_collections: launch/device_python.sh puts the pure-Python wheels of .device_wheels/ on
# PYTHONPATH (how to prepare them: there).
set -euo pipefail
out=${1:?usage: $0 OUT_DIR [--grid=auto|full|reduced] [--budget_s=S] [--overwrite]}
shift
case $out in
  /*) ;;
  *) out="$PWD/$out" ;;  # relative to the caller's directory, before the cd below
esac
command_line="launch/device_check.sh $out${*:+ $*}"
cd "$(dirname "$0")/.."
source launch/device_python.sh  # $python, the device wheels, the allocator settings
export NCL_DEVICE_CHECK_COMMAND="$command_line"
exec "$python" -m ncl_jax.device_check --out="$out" "$@"
