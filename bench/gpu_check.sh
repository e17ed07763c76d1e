#!/usr/bin/env bash
# The GPU check: the gpu-marked tests, then the probe, LARS and trainer-overhead benches, on one
# GPU, in under 8 minutes; each step's output goes to RESULTS_DIR/<step>.txt and a one-line
# status per step to RESULTS_DIR/summary.txt.
# Usage: bench/gpu_check.sh RESULTS_DIR          (from the repository root, after pip install -e .[dev])
# Status: 0 when every step passed; 1 when one failed or timed out; 2 without a CUDA GPU.
# The steps' time limits add up to 7.5 minutes. Record the numbers in docs/benchmarks.md.
# Note: bench/probe.py and bench/lars.py time their CPU paths as written (they have no device
# option yet); bench/trainer_overhead.py runs the trainer on the device DeepSpeed picks (the GPU).
set -uo pipefail
out=${1:?results directory}
mkdir -p "$out"
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
summary="$out/summary.txt"
: >"$summary"
if ! python -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "no CUDA GPU visible: nothing to check" | tee -a "$summary"
  exit 2
fi
{
  date -u +"%Y-%m-%dT%H:%M:%SZ"
  git rev-parse --short HEAD 2>/dev/null || true
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  python -c 'import torch, deepspeed; print("torch", torch.__version__, "cuda", torch.version.cuda, "deepspeed", deepspeed.__version__)'
} >"$out/environment.txt" 2>&1
failed=0
step() {  # step NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
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
step tests 210 python -m pytest tests -m gpu -v -rs -p no:cacheprovider
step probe 60 python bench/probe.py --quick
step lars 90 python bench/lars.py --quick --no-compile --no-write
step trainer_overhead 90 python bench/trainer_overhead.py --quick --skip-run --no-write-docs
exit "$failed"
