#!/usr/bin/env bash
# The DRS pipeline, end to end. Every step skips work whose output already exists, so a rerun resumes.
#
#   bash run.sh                                  # the synthetic demo dataset (CPU, minutes)
#   bash run.sh --voc-root /data/VOC2012         # PASCAL VOC 2012 (GPU)
#   bash run.sh --voc-root /data/VOC2012 --cls-checkpoint DRS_learnable.pth   # skip stage-1 training
#
# Options: --voc-root DIR, --out DIR (default outputs/demo or outputs/voc), --cls-checkpoint CKPT,
#          --device auto|cpu|cuda, --gpus N (torchrun processes for training; VOC only).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}

VOC_ROOT="" OUT="" CLS_CKPT="" DEVICE=auto GPUS=1
while [ $# -gt 0 ]; do
  case "$1" in
    --voc-root) VOC_ROOT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --cls-checkpoint) CLS_CKPT=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --gpus) GPUS=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

step() { printf '\n== %s\n' "$*"; }

# Train one stage-1 classifier unless its last.pth exists (an interrupted run resumes).
train_classifier() {  # config out_dir [--set k=v ...]
  local config=$1 out=$2; shift 2
  if [ -f "$out/done" ]; then echo "$out: trained, skipping"; return; fi
  local launcher=("$PY")
  [ "$GPUS" -gt 1 ] && launcher=(torchrun --standalone --nproc_per_node "$GPUS")
  "${launcher[@]}" train_cls.py --config "$config" --voc-root "$ROOT" --out-dir "$out" --device "$DEVICE" \
    --resume auto "$@"
  touch "$out/done"
}

if [ -z "$VOC_ROOT" ]; then
  OUT=${OUT:-outputs/demo}
  echo "No --voc-root given: running on the synthetic demo dataset in $OUT (see docs/demo.md)."
  ROOT=$OUT/VOC2012
  step "demo dataset"
  $PY -m utils.demo_data --out "$ROOT"
  DEMO_SIZE=(--size 112 --scales 96 112 128)
  # shellcheck source=/dev/null
  source configs/demo_stage1.sh
else
  OUT=${OUT:-outputs/voc}
  ROOT=$VOC_ROOT
  echo "VOC root: $ROOT; outputs in $OUT."
  step "image-level label lists"
  [ -f "$ROOT/lists/train_aug_cls.txt" ] || $PY -m utils.voc --voc-root "$ROOT"
  if [ -z "$CLS_CKPT" ]; then
    step "stage 1: DRS classifier"
    train_classifier configs/cls_voc.yaml "$OUT/cls_drs"
    CLS_CKPT=$OUT/cls_drs/last.pth
  fi
  step "localization maps (train_aug)"
  $PY make_localization_maps.py --voc-root "$ROOT" --list "$ROOT/lists/train_aug_cls.txt" \
    --checkpoint "$CLS_CKPT" --out "$ROOT/localization_maps" --device "$DEVICE"
  step "evaluation of the maps (train list, original protocol)"
  $PY evaluate_maps.py --voc-root "$ROOT" --list "$ROOT/lists/train_cls.txt" --maps "$ROOT/localization_maps" \
    --out "$OUT/eval/cls_drs" --name "DRS"
  cat "$OUT/eval/cls_drs/scores.md"
fi
