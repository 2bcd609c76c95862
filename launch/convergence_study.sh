#!/usr/bin/env bash
# The CIFAR-10-LT convergence study of docs/results.md: BSCE (K = 1) against NCL (K = 3),
# ResNet-8 experts, 100 epochs (5 warm-up, x0.1 at 80 and 90), the paper variant, two seeds
# each, one ncl-sweep per row. Rows alternate seed by seed, so that whenever it is stopped the
# finished runs cover both rows; rerunning the script resumes (finished runs are skipped,
# interrupted ones resume from their checkpoints).
#
#   TFDS_DATA_DIR=../shared/tensorflow_datasets bash launch/convergence_study.sh runs/c10_100ep [ROW[:SEED] ...]
#
# ROW: bsce, ncl (the default pair), independent, nil, nil_nbod (the follow-up rows).
# ROW:SEED (42 or 43) runs that one seed of the row only, e.g. bsce:43 in a checkout that does
# not hold the row's finished seed-42 run.
set -euo pipefail
out=${1:?usage: convergence_study.sh OUT_DIR [ROW[:SEED] ...]}
shift
rows=("${@:-bsce ncl}")
read -r -a rows <<< "${rows[*]}"
python=${PYTHON:-python}
first_seed=42  # the config's seed: ncl-sweep --seeds=N trains seeds 42 .. 42 + N - 1
common=(--config.dataset.name=cifar10_jpeg --config.num_epochs=100
        --config.optim.warmup_epochs=5 "--config.optim.milestones=(80,90)")
declare -A ablation=([bsce]=baseline [ncl]=ncl [independent]=independent [nil]=nil
                     [nil_nbod]=nil_nbod)
for entry in "${rows[@]}"; do
  row=${entry%%:*}
  [ -n "${ablation[$row]:-}" ] || { echo "error: unknown row $row" >&2; exit 2; }
  if [[ $entry == *:* ]] && [[ ! ${entry#*:} =~ ^(42|43)$ ]]; then
    echo "error: $entry: the study's seeds are 42 and 43" >&2; exit 2
  fi
done
for seeds in 1 2; do
  for entry in "${rows[@]}"; do
    row=${entry%%:*}
    only=()
    if [[ $entry == *:* ]]; then
      (( ${entry#*:} - first_seed == seeds - 1 )) || continue
      only=(--task=$((seeds - 1)))
    fi
    "$python" -m ncl_jax.sweep --config="configs/cifar10_lt.py:quick,ablation=${ablation[$row]}" \
      --seeds="$seeds" "${only[@]}" --workdir="$out/$row" "${common[@]}"
  done
done
