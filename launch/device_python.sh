# Sourced by the accelerator launchers (device_check.sh, paper_cifar_device.sh): sets
# $python to the interpreter ($PYTHON, else this checkout's .venv, else python / python3 on
# PATH), checks that it imports jax, and puts the pure-Python wheels of .device_wheels/ on
# PYTHONPATH for what the device image lacks (ml_collections; dm-pix for the JAX views).
# Prepare them with
#   pip download --no-deps -d .device_wheels ml-collections==1.1.0 dm-pix==0.4.5
# Run from the checkout's root.
if [ -n "${PYTHON:-}" ]; then python=$PYTHON
elif [ -x .venv/bin/python ]; then python=$PWD/.venv/bin/python
else python=$(command -v python || command -v python3)
fi
if ! "$python" -c "import jax" 2>/dev/null; then
  echo "error: $python cannot import jax; set PYTHON=/path/to/the/venv/bin/python" \
    "(the environment with jax, flax, optax and orbax)." >&2
  exit 2
fi
if ! "$python" -c "import ml_collections, dm_pix" 2>/dev/null; then
  shopt -s nullglob
  for wheel in .device_wheels/*.whl; do  # Python imports pure wheels as zip files
    PYTHONPATH="$PWD/$wheel${PYTHONPATH:+:$PYTHONPATH}"
  done
  shopt -u nullglob
  export PYTHONPATH
fi
if ! "$python" -c "import ml_collections" 2>/dev/null; then
  echo "error: ml_collections is not installed and .device_wheels/ holds no wheel of it; run" \
    "pip download --no-deps -d .device_wheels ml-collections==1.1.0 first." >&2
  exit 2
fi
# As launch/local_gpus.sh: let the allocator grow as training does (no 75% up-front grab).
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
