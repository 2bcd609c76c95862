#!/usr/bin/env bash
# Several processes on this machine, each with fake CPU devices, joined by
# jax.distributed (gloo collectives): the multi-host code path without a cluster.
#   NUM_PROCESSES=2 DEVICES_PER_PROCESS=2 launch/local_cpu_multiprocess.sh \
#       configs/smoke.py /tmp/ncl_mp [--config.x=y ...]
# Used by tests/test_train.py. Exits non-zero if any process fails; process 0's output
# goes to stdout, the others' to WORKDIR/process_<i>.log.
# PYTHON selects the interpreter (default: python on PATH).
set -euo pipefail
config=${1:?usage: $0 CONFIG[:ARGS] WORKDIR [--config.overrides...]}
workdir=${2:?usage: $0 CONFIG[:ARGS] WORKDIR [--config.overrides...]}
shift 2
n=${NUM_PROCESSES:-2}
devices=${DEVICES_PER_PROCESS:-2}
port=${PORT:-$((20000 + RANDOM % 20000))}
cd "$(dirname "$0")/.."
mkdir -p "$workdir"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"  # last one wins
pids=()
for ((i = n - 1; i >= 0; i--)); do
  cmd=("${PYTHON:-python}" -m ncl_jax.main --config="$config" --workdir="$workdir"
       --coordinator_address="localhost:$port" --num_processes="$n" --process_id="$i" "$@")
  if ((i == 0)); then
    "${cmd[@]}" &
  else
    "${cmd[@]}" >"$workdir/process_$i.log" 2>&1 &
  fi
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"
