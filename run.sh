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

# Run a training script unless its output folder is marked done; an interrupted run resumes from last.pth.
train() {  # script config voc_root out_dir [--set k=v ...]
  local script=$1 config=$2 root=$3 out=$4; shift 4
  if [ -f "$out/done" ]; then echo "$out: trained, skipping"; return; fi
  local launcher=("$PY")
  [ "$GPUS" -gt 1 ] && launcher=(torchrun --standalone --nproc_per_node "$GPUS")
  "${launcher[@]}" "$script" --config "$config" --voc-root "$root" --out-dir "$out" --device "$DEVICE" \
    --resume auto "$@"
  touch "$out/done"
}

# The demo's stage 1: one pre-trained plain network (the ImageNet stand-in), then every variant fine-tuned
# from it with the same data and budget, evaluated side by side on the val images.
demo_stage1() {
  step "pre-training stand-in: plain ReLU on a disjoint synthetic set (seed 1)"
  $PY -m utils.demo_data --out "$OUT/pretrain/VOC2012" --seed 1
  train train_cls.py configs/cls_demo_pretrain.yaml "$OUT/pretrain/VOC2012" "$OUT/cls_pretrain"
  local runs=()
  for variant in relu 0.9 0.7 learnable; do
    step "stage 1: classifier with ${variant} activations, fine-tuned from the stand-in"
    train train_cls.py configs/cls_demo.yaml "$ROOT" "$OUT/cls_$variant" \
      --set model.drs="$variant" --set model.init_from="$OUT/cls_pretrain/last.pth"
    $PY evaluate_maps.py --voc-root "$ROOT" --list "$ROOT/lists/val_cls.txt" --checkpoint "$OUT/cls_$variant/last.pth" \
      --out "$OUT/eval/cls_$variant" --name "$variant" --device "$DEVICE" "${DEMO_SIZE[@]}"
    runs+=("$(variant_title "$variant")=$OUT/eval/cls_$variant/scores.json")
  done
  step "stage 1 comparison (demo val images)"
  $PY -m utils.report --out "$OUT/stage1_comparison.md" --title "Stage 1 on the demo: localization maps" "${runs[@]}"
  CLS_CKPT=$OUT/cls_0.9/last.pth  # the DRS variant that trains at this size feeds the next stages (docs/demo.md)
  step "localization maps of DRS (delta 0.9) for train_aug"
  $PY make_localization_maps.py --voc-root "$ROOT" --list "$ROOT/lists/train_aug_cls.txt" --checkpoint "$CLS_CKPT" \
    --out "$ROOT/localization_maps" --device "$DEVICE" "${DEMO_SIZE[@]}"
}

variant_title() {
  case "$1" in
    relu) echo "plain ReLU (no DRS)" ;;
    learnable) echo "DRS, learnable" ;;
    *) echo "DRS, fixed delta $1" ;;
  esac
}

if [ -z "$VOC_ROOT" ]; then
  OUT=${OUT:-outputs/demo}
  echo "No --voc-root given: running on the synthetic demo dataset in $OUT (see docs/demo.md)."
  ROOT=$OUT/VOC2012
  step "demo dataset"
  $PY -m utils.demo_data --out "$ROOT"
  DEMO_SIZE=(--size 112 --scales 96 112 128)
  demo_stage1
else
  OUT=${OUT:-outputs/voc}
  ROOT=$VOC_ROOT
  echo "VOC root: $ROOT; outputs in $OUT."
  step "image-level label lists"
  [ -f "$ROOT/lists/train_aug_cls.txt" ] || $PY -m utils.voc --voc-root "$ROOT"
  if [ -z "$CLS_CKPT" ]; then
    step "stage 1: DRS classifier"
    train train_cls.py configs/cls_voc.yaml "$ROOT" "$OUT/cls_drs"
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
