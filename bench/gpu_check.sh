#!/usr/bin/env bash
# The GPU check, on one GPU in at most 8 minutes: the gpu-marked tests, the probe and LARS
# benches timed on CUDA (--device cuda, between torch.cuda.synchronize calls), the trainer-overhead
# bench, and a 2-epoch bf16 trainer run of a paper config (ResNet-20, two-phase + LARS) on
# synthetic CIFAR-shaped data. Each step's output goes to RESULTS_DIR/<step>.txt, a one-line
# status per step to RESULTS_DIR/summary.txt, the versions to RESULTS_DIR/environment.txt.
# Usage (from anywhere; it works in the repository it lives in):
#   bench/gpu_check.sh RESULTS_DIR [--kit DIR] [--dry-run]
#   --kit DIR   first install the project's dependencies from an offline kit
#               (launch/offline_kit.sh DIR --extras dev), with the package index switched off
#   --dry-run   check the control flow only: write the plan (each step's command and time
#               limit) to summary.txt without running anything (it still needs the CUDA check)
# Status: 0 when every step passed (or planned); 1 when one failed or timed out; 2 without a
# CUDA GPU or for bad arguments. Record the numbers in docs/benchmarks.md.
# The step time limits below add up to 465 s (with --kit; 405 s without).
set -uo pipefail
out=${1:?usage: bench/gpu_check.sh RESULTS_DIR [--kit DIR] [--dry-run]}
shift
kit="" dry_run=0
while [ $# -gt 0 ]; do
  case $1 in
    --kit) kit=$(realpath "${2:?--kit needs a directory}"); shift ;;
    --dry-run) dry_run=1 ;;
    *) echo "gpu_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$out"
out=$(realpath "$out")
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
summary="$out/summary.txt"
: >"$summary"
failed=0
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  if [ "$dry_run" = 1 ]; then
    echo "$name: planned, limit ${limit}s: $*" | tee -a "$summary"
    return
  fi
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$out/$name.txt" 2>&1
  local status=$?
  local verdict=ok
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    verdict="TIMED OUT after ${limit}s"
  elif [ "$status" -ne 0 ]; then
    verdict="FAILED (status $status)"
  fi
  [ "$verdict" = ok ] || failed=1
  echo "$name: $verdict, $((SECONDS - start)) s" | tee -a "$summary"
}
if [ -n "$kit" ]; then  # before anything imports the project's dependencies
  step install 60 pip install --no-index --find-links "$kit" "ds-twophase[dev]"
  [ "$failed" = 0 ] || exit 1
fi
if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "no CUDA GPU visible: nothing to check" | tee -a "$summary"
  exit 2
fi
[ "$dry_run" = 1 ] || {
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse --short HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  python -c 'import torch, deepspeed; print("torch", torch.__version__, "cuda", torch.version.cuda, "deepspeed", deepspeed.__version__)'
} >"$out/environment.txt" 2>&1
step tests 150 python -m pytest tests -m gpu -v -rs -p no:cacheprovider
step probe 45 python bench/probe.py --quick --device cuda
step lars 60 python bench/lars.py --quick --no-compile --no-write --device cuda
step trainer_overhead 60 python bench/trainer_overhead.py --quick --skip-run --no-write-docs
step train_bf16 90 python -m ds_twophase.train \
  --config configs/paper/cifar10_resnet20_two_phase_lars.json \
  --set 'trainer.dataset={"name": "synthetic", "train_size": 16384, "test_size": 1024, "val_size": 1024}' \
  --set trainer.epochs=2 --set 'bf16={"enabled": true}' --set scheduler.params.probe.every=1 \
  --set "trainer.output_dir=$out/train_bf16_run"
exit "$failed"
