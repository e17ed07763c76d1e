#!/usr/bin/env bash
# One machine, N ranks (GPUs, or CPU processes with gloo when there is no GPU).
# Usage: launch/single_node.sh NUM_RANKS CONFIG [trainer arguments...]
#   e.g. launch/single_node.sh 2 configs/mnist1d/two_phase_lars.json --set trainer.seed=1
# SIGTERM or SIGUSR1 to this script reaches every rank: they finish the current optimizer step,
# save a checkpoint and exit 75 ("resumable"), which this script returns; continue the run with
# the same command plus --resume auto. (DeepSpeed 0.19.8's runner dies on SIGTERM without passing
# it on and would leave its launcher and the ranks running, so this script does not exec it.)
set -euo pipefail
num_ranks=${1:?number of ranks}
config=${2:?config file}
shift 2
if [ -z "${OMP_NUM_THREADS:-}" ]; then
  # The launcher sets no thread count: split the cores between the ranks.
  export OMP_NUM_THREADS=$(( $(nproc) / num_ranks > 0 ? $(nproc) / num_ranks : 1 ))
fi
set -m  # the runner in its own process group: Ctrl-C and signals reach it only through us
deepspeed --num_gpus "$num_ranks" --module ds_twophase.train --config "$config" "$@" &
runner=$!
forwarded=0
to_ranks() {
  # The ranks are the children of the runner's child (deepspeed.launcher.launch).
  forwarded=1
  local launcher
  for launcher in $(pgrep -P "$runner" || true); do
    pkill "-$1" -P "$launcher" || true
  done
}
trap 'to_ranks TERM' TERM
trap 'to_ranks USR1' USR1
trap 'forwarded=1; kill -INT -- "-$runner" 2>/dev/null || true' INT
while :; do
  forwarded=0
  status=0
  wait "$runner" || status=$?
  # A trapped signal interrupts wait (status > 128) while the runner still runs: wait again.
  [ "$forwarded" = 1 ] || break
done
exit "$status"
