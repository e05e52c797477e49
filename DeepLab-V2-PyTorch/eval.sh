#!/usr/bin/env bash
# The original eval.sh: full-resolution val, MSC, logits saved, then dense CRF.
#   bash DeepLab-V2-PyTorch/eval.sh /data/VOC2012 CHECKPOINT [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
VOC_ROOT=${1:?usage: eval.sh VOC_ROOT CHECKPOINT [OUT_DIR]}
CKPT=${2:?usage: eval.sh VOC_ROOT CHECKPOINT [OUT_DIR]}
OUT=${3:-outputs/deeplab_v2/eval}
${PYTHON:-python} DeepLab-V2-PyTorch/eval.py --config DeepLab-V2-PyTorch/configs/voc12.yaml --voc-root "$VOC_ROOT" \
  --list "$VOC_ROOT/lists/val_cls.txt" --checkpoint "$CKPT" --out "$OUT" --crf
