#!/usr/bin/env bash
# Several machines through the deepspeed launcher and a hostfile (passwordless ssh from this node
# to every host, the same Python environment and repository path on each).
# Usage: launch/multi_node.sh HOSTFILE CONFIG [trainer arguments...]
#   e.g. launch/multi_node.sh launch/hostfile.example configs/mnist1d/two_phase_lars.json
# The hostfile lists "hostname slots=N" per machine (see launch/hostfile.example). The first host
# is the master; pick a free --master_port if 29500 is taken. All ranks must see the same data
# (MNIST-1D is generated locally from the seed; real data sets need the same root on every host)
# and write to a shared trainer.output_dir for --resume auto to find the checkpoints.
set -euo pipefail
hostfile=${1:?hostfile}
config=${2:?config file}
shift 2
master=$(awk 'NF && $1 !~ /^#/ {print $1; exit}' "$hostfile")
# DS_LAUNCHER picks the runner's way of reaching the hosts (pdsh by default; openmpi, mvapich,
# slurm, ...).
# Pre-emption: for a multi-host pdsh job the runner passes SIGINT/SIGTERM on (each host's
# launcher gives its ranks SIGTERM and 30 s before SIGKILL; a rank that saved in time leaves a
# complete checkpoint, but the runner reports status 1, not 75). SIGUSR1 would kill the runner
# outright, so it is turned into SIGTERM here. Under SLURM use launch/slurm.sbatch instead.
deepspeed ${DS_LAUNCHER:+--launcher "$DS_LAUNCHER"} --hostfile "$hostfile" --master_addr "$master" --master_port "${MASTER_PORT:-29500}" \
  --module ds_twophase.train --config "$config" "$@" &
runner=$!
forwarded=0
trap 'forwarded=1; kill -TERM "$runner" 2>/dev/null || true' TERM USR1
while :; do
  forwarded=0
  status=0
  wait "$runner" || status=$?
  [ "$forwarded" = 1 ] || break
done
exit "$status"
