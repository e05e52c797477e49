#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go (docs/testing.md): full-size training-step benchmarks, the CUDA
# tests, then the whole demo pipeline on the GPU. Each part's log lands in LOGS; a failing part does not
# stop the next, and the exit status says whether any failed.
#
#   bash bench/gpu_checks.sh [LOGS]          # LOGS defaults to outputs/gpu_checks
#   BUDGET=550 bash bench/gpu_checks.sh      # seconds for everything; the demo gets what is left (default 1800)
# Needs requirements.txt installed (pydensecrf2: without it the CRF tests skip and the demo stops at its first CRF).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOGS=${1:-outputs/gpu_checks}
mkdir -p "$LOGS"
failed=()

part() {  # name command...: run, log to LOGS/name.log, remember failures
  local name=$1; shift
  printf '\n== %s\n' "$name"
  local start=$SECONDS
  "$@" 2>&1 | tee "$LOGS/$name.log"
  local status=${PIPESTATUS[0]}
  echo "== $name: exit $status after $((SECONDS - start)) s" | tee -a "$LOGS/summary.txt"
  [ "$status" -eq 0 ] || failed+=("$name")
}

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"; } 2>&1 | tee "$LOGS/summary.txt"

part bench_v3plus_bf16 $PY bench/bench_deeplab_v3plus.py --device cuda --crop 513 --batch 16 --depth 101 \
  --stem-channels 64 --amp bf16
part bench_v3plus_fp32 $PY bench/bench_deeplab_v3plus.py --device cuda --crop 513 --batch 16 --depth 101 --stem-channels 64
part bench_stage1 $PY bench/bench_stage1.py --device cuda --width 1.0 --batch 5
part tests $PY -m pytest -q -rs -s -p no:cacheprovider tests/test_cuda.py
part demo timeout "$(( ${BUDGET:-1800} - SECONDS ))" env PYTHON="$PY" bash run.sh --out "$LOGS/demo" --device cuda

for report in stage1_comparison.md segmentation.md; do
  [ -f "$LOGS/demo/$report" ] && cp "$LOGS/demo/$report" "$LOGS/demo_$report"
done
if [ ${#failed[@]} -gt 0 ]; then echo "failed: ${failed[*]}" | tee -a "$LOGS/summary.txt"; exit 1; fi
echo "all GPU checks passed" | tee -a "$LOGS/summary.txt"
