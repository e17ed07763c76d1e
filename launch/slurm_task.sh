#!/usr/bin/env bash
# One SLURM task = one rank: map SLURM's per-task variables to the environment that
# torch.distributed and DeepSpeed read, then exec the command (run by launch/slurm.sbatch via
# srun; usable with any srun line). MASTER_ADDR defaults to the first host of the allocation,
# MASTER_PORT to 20000 + job id % 20000.
# Usage: srun launch/slurm_task.sh python -m ds_twophase.train --config CONFIG [arguments...]
set -euo pipefail
: "${SLURM_PROCID:?not inside a SLURM task (SLURM_PROCID unset); start this through srun}"
first_host() {
  if command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "$1" | head -n 1
  else
    # Without scontrol: the first entry of a plain list ("a,b" or "node[1-4]" -> node1).
    local entry=${1%%,*}
    if [[ $entry =~ ^(.*)\[([0-9]+) ]]; then
      entry="${BASH_REMATCH[1]}${BASH_REMATCH[2]}"
    fi
    echo "$entry"
  fi
}
export RANK=$SLURM_PROCID
export WORLD_SIZE=${SLURM_NTASKS:?SLURM_NTASKS unset}
export LOCAL_RANK=${SLURM_LOCALID:?SLURM_LOCALID unset}
# Tasks on this node: SLURM_NTASKS_PER_NODE when given, else this node's entry of
# SLURM_TASKS_PER_NODE ("8(x2)" means 8 on each of 2 nodes; the first entry is enough for the
# even layouts a GPU job uses).
tasks_here=${SLURM_NTASKS_PER_NODE:-${SLURM_TASKS_PER_NODE:-1}}
export LOCAL_SIZE=${tasks_here%%[(,]*}
export LOCAL_WORLD_SIZE=$LOCAL_SIZE
export MASTER_ADDR=${MASTER_ADDR:-$(first_host "${SLURM_JOB_NODELIST:-${SLURM_NODELIST:?SLURM_JOB_NODELIST unset}}")}
export MASTER_PORT=${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}
exec "$@"
