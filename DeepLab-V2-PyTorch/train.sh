#!/usr/bin/env bash
# The original train.sh: 2 GPUs, configs/voc12_2gpu.yaml, then evaluation with and without CRF.
#   bash DeepLab-V2-PyTorch/train.sh /data/VOC2012 [LABEL_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
VOC_ROOT=${1:?usage: train.sh VOC_ROOT [LABEL_DIR]}
LABELS=${2:-refined_pseudo_segmentation_labels}
LOG_DIR=outputs/deeplab_v2/Deeplabv2_pseudo_segmentation_labels_2gpu
GPUS=${GPUS:-2}
torchrun --standalone --nproc_per_node "$GPUS" DeepLab-V2-PyTorch/train.py \
  --config DeepLab-V2-PyTorch/configs/voc12_2gpu.yaml --voc-root "$VOC_ROOT" --labels "$LABELS" \
  --out "$LOG_DIR" --resume auto
bash DeepLab-V2-PyTorch/eval.sh "$VOC_ROOT" "$LOG_DIR/checkpoint_final.pth" "$LOG_DIR/eval"
