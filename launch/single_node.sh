#!/usr/bin/env bash
# One machine, N ranks (GPUs, or CPU processes with gloo when there is no GPU).
# Usage: launch/single_node.sh NUM_RANKS CONFIG [trainer arguments...]
#   e.g. launch/single_node.sh 2 configs/mnist1d/two_phase_lars.json --set trainer.seed=1
set -euo pipefail
num_ranks=${1:?number of ranks}
config=${2:?config file}
shift 2
if [ -z "${OMP_NUM_THREADS:-}" ]; then
  # The launcher sets no thread count: split the cores between the ranks.
  export OMP_NUM_THREADS=$(( $(nproc) / num_ranks > 0 ? $(nproc) / num_ranks : 1 ))
fi
exec deepspeed --num_gpus "$num_ranks" --module ds_twophase.train --config "$config" "$@"
