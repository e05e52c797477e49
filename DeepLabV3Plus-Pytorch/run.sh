#!/usr/bin/env bash
# The original run.sh: train, then evaluate with and without CRF on the crop-val protocol (and on full images).
#   bash DeepLabV3Plus-Pytorch/run.sh /data/VOC2012 [LABEL_DIR]      (GPUS=2 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
VOC_ROOT=${1:?usage: run.sh VOC_ROOT [LABEL_DIR]}
LABELS=${2:-refined_pseudo_segmentation_labels}
OUT=outputs/deeplab_v3plus/voc
GPUS=${GPUS:-2}
torchrun --standalone --nproc_per_node "$GPUS" DeepLabV3Plus-Pytorch/main.py --voc-root "$VOC_ROOT" \
  --labels "$LABELS" --out "$OUT" --resume auto
for protocol in crop-val full; do
  extra=()
  [ "$protocol" = crop-val ] && extra=(--crop-val)
  ${PYTHON:-python} DeepLabV3Plus-Pytorch/eval.py --voc-root "$VOC_ROOT" --list "$VOC_ROOT/ImageSets/Segmentation/val.txt" \
    --checkpoint "$OUT/checkpoint_final.pth" --out "$OUT/eval_$protocol" --crf "${extra[@]}"
done
