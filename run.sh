#!/usr/bin/env bash
# The DRS pipeline, end to end. Every step skips work whose output already exists, so a rerun resumes.
#
#   bash run.sh                                  # the synthetic demo dataset (CPU, minutes)
#   bash run.sh --voc-root /data/VOC2012         # PASCAL VOC 2012 (GPU)
#   bash run.sh --voc-root /data/VOC2012 --refine-checkpoint Refine_DRS_learnable.pth   # straight to stage 3
#   bash run.sh --voc-root /data/VOC2012 --fetch --released checkpoints   # download what is needed, then stage 3
#
# Options: --voc-root DIR, --out DIR (default outputs/demo or outputs/voc),
#          --cls-checkpoint CKPT (skip stage-1 training), --refine-checkpoint CKPT (skip stages 1-2),
#          --seg none|v2|v3p|v2,v3p (segmentation networks trained on the pseudo labels, evaluated on val;
#                demo default v2; v2,v3p adds DeepLab-V3+, about 20 more CPU minutes),
#          --device auto|cpu|cuda, --gpus N (torchrun processes for training).
#          VOC only: --fetch (first download what the chosen stages read: python -m utils.assets),
#                    --released checkpoints|labels|deeplab (the authors' files instead of our stages:
#                          checkpoints: stage 3 from Refine_DRS_learnable.pth; labels: DeepLab (--seg, default v2)
#                          on the released pseudo labels; deeplab: evaluate the released DeepLab of --seg),
#                    --mirror URL (fetch the same file names from there), --assets-home DIR (where
#                          checkpoints/released/ and DeepLab-V2-PyTorch/data/ are; default: this repository).
#          Demo only: --variants LIST (stage-1 activations compared; default relu,learnable;
#                     add a fixed delta such as 0.9 for the ablation),
#                     --seeds LIST (stage-1 training seeds; several give mean ± std; default 0),
#                     --stage1-only (stop after the stage-1 comparison),
#                     --demo-size N (image side in px, default 160; crops, test size and scales follow;
#                                    outputs in outputs/demo_N unless --out; 224: about 3x the stage-1 time),
#                     --quick (a smoke run of every stage in a minute or two: 96 px, 40 training images,
#                              one epoch per training, 20 DeepLab iterations; its numbers mean nothing).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python}

VOC_ROOT="" OUT="" CLS_CKPT="" REFINE_CKPT="" DEVICE=auto GPUS=1 SEG="" VARIANTS=relu,learnable SEEDS=0 STAGE1_ONLY=0
DEMO_SIZE="" QUICK=0 FETCH=0 RELEASED="" MIRROR="" ASSETS_HOME=.
while [ $# -gt 0 ]; do
  case "$1" in
    --voc-root) VOC_ROOT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --cls-checkpoint) CLS_CKPT=$2; shift 2 ;;
    --refine-checkpoint) REFINE_CKPT=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --gpus) GPUS=$2; shift 2 ;;
    --seg) SEG=$2; shift 2 ;;
    --variants) VARIANTS=$2; shift 2 ;;
    --seeds) SEEDS=$2; shift 2 ;;
    --stage1-only) STAGE1_ONLY=1; shift ;;
    --demo-size) DEMO_SIZE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --fetch) FETCH=1; shift ;;
    --released) RELEASED=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --assets-home) ASSETS_HOME=$2; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
for net in ${SEG//,/ }; do
  case "$net" in
    none|v2|v3p) ;;
    *) echo "run.sh: --seg takes none, v2, v3p or v2,v3p; got $SEG" >&2; exit 2 ;;
  esac
done
if ! [[ $VARIANTS =~ ^(relu|learnable|0?\.[0-9]+|1(\.0*)?)(,(relu|learnable|0?\.[0-9]+|1(\.0*)?))*$ ]]; then
  echo "run.sh: --variants takes a comma list of relu, learnable and fixed deltas in (0, 1]; got $VARIANTS" >&2; exit 2
fi
DEMO_DATA=() EVIDENCE_ARGS=() QUICK_EPOCHS=() QUICK_ITERATIONS=()
if [ "$QUICK" = 1 ]; then
  [ -z "$VOC_ROOT" ] || { echo "run.sh: --quick is for the demo dataset, not --voc-root" >&2; exit 2; }
  DEMO_SIZE=${DEMO_SIZE:-96}
  DEMO_DATA=(--num-train-aug 40 --num-train 20 --num-val 20)
  EVIDENCE_ARGS=(--num-train 60 --num-test 30 --epochs 1)
  QUICK_EPOCHS=(--set train.epochs=1 --set val.every=1)
  QUICK_ITERATIONS=(--set train.iterations=20 --set train.save_every=10)
fi
DEMO_SIZE=${DEMO_SIZE:-160}
if ! [[ $DEMO_SIZE =~ ^[0-9]+$ ]] || [ "$DEMO_SIZE" -lt 96 ]; then
  echo "run.sh: --demo-size takes an image side of at least 96 px; got $DEMO_SIZE" >&2; exit 2
fi
if ! [[ $GPUS =~ ^[1-9][0-9]*$ ]]; then
  echo "run.sh: --gpus takes a positive number of processes; got $GPUS" >&2; exit 2
fi
if ! [[ $DEVICE =~ ^(auto|cpu|cuda(:[0-9]+)?)$ ]]; then
  echo "run.sh: --device takes auto, cpu, cuda or cuda:N; got $DEVICE" >&2; exit 2
fi
if ! [[ $RELEASED =~ ^(|checkpoints|labels|deeplab)$ ]]; then
  echo "run.sh: --released takes checkpoints, labels or deeplab; got $RELEASED" >&2; exit 2
fi
if [ -z "$VOC_ROOT" ] && [ "$FETCH$RELEASED$MIRROR" != 0 ]; then
  echo "run.sh: --fetch, --released and --mirror are for PASCAL VOC: add --voc-root DIR" >&2; exit 2
fi
if [[ $RELEASED =~ ^(labels|deeplab)$ ]]; then
  SEG=${SEG:-v2}
  [ "$SEG" != none ] || { echo "run.sh: --released $RELEASED needs a network: --seg v2, v3p or v2,v3p" >&2; exit 2; }
fi
if ! [[ $SEEDS =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  echo "run.sh: --seeds takes a comma list of non-negative integers; got $SEEDS" >&2; exit 2
fi

step() { printf '\n== [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }  # time since start

# Run a training script unless its output folder is marked done; an interrupted run resumes from last.pth.
CURVES=()  # every training run of this invocation, drawn into training_curves.png at the end
train() {  # script config voc_root out_dir [--set k=v ...]
  local script=$1 config=$2 root=$3 out=$4; shift 4
  CURVES+=("${out#"$OUT"/}=$out")
  if [ -f "$out/done" ]; then echo "$out: trained, skipping"; return; fi
  local launcher=("$PY")
  [ "$GPUS" -gt 1 ] && launcher=(torchrun --standalone --nproc_per_node "$GPUS")
  local quick=("${QUICK_ITERATIONS[@]}")
  [[ $script == train_*.py ]] && quick=("${QUICK_EPOCHS[@]}")
  "${launcher[@]}" "$script" --config "$config" --voc-root "$root" --out "$out" --device "$DEVICE" \
    --resume auto "$@" "${quick[@]}"
  touch "$out/done"
}

variant_title() {
  case "$1" in
    relu) echo "plain ReLU (no DRS)" ;;
    learnable) echo "DRS, learnable" ;;
    *) echo "DRS, fixed delta $1" ;;
  esac
}

# The demo's stage 1: one pre-trained plain network per training seed (the ImageNet stand-in), then every
# variant fine-tuned from it with the same data and budget, evaluated side by side on the val images. Seed 0
# writes into $OUT itself; other seeds into $OUT/seed<N>. The comparison gives mean ± std over the seeds.
demo_stage1() {
  step "class evidence per region: a probe CNN on single-object images"
  $PY -m utils.demo.evidence --out "$OUT/eval/evidence" "${EVIDENCE_ARGS[@]}"
  step "pre-training stand-in data: a disjoint synthetic set (seed 1)"
  $PY -m utils.demo.data --out "$OUT/pretrain/VOC2012" --seed 1 --size "$DEMO_SIZE" "${DEMO_DATA[@]}"
  local seed variant run rows=() pictures=()
  declare -A scores=()
  for seed in ${SEEDS//,/ }; do
    run=$OUT
    [ "$seed" = 0 ] || run=$OUT/seed$seed
    step "pre-training stand-in: plain ReLU (training seed $seed)"
    train train_cls.py configs/cls_demo_pretrain.yaml "$OUT/pretrain/VOC2012" "$run/cls_pretrain" --set train.seed="$seed" \
      "${CLS_SIZE_SETS[@]}"
    for variant in ${VARIANTS//,/ }; do
      step "stage 1: classifier with ${variant} activations, fine-tuned from the stand-in (training seed $seed)"
      train train_cls.py configs/cls_demo.yaml "$ROOT" "$run/cls_$variant" --set model.drs="$variant" \
        --set model.init_from="$run/cls_pretrain/last.pth" --set train.seed="$seed" "${CLS_SIZE_SETS[@]}"
      $PY evaluate_maps.py --voc-root "$ROOT" --list "$ROOT/lists/val_cls.txt" --checkpoint "$run/cls_$variant/last.pth" \
        --out "$run/eval/cls_$variant" --name "$variant" --device "$DEVICE" "${SIZE_ARGS[@]}"
      scores[$variant]+="${scores[$variant]:+,}$run/eval/cls_$variant/scores.json"
      [ "$seed" = "${SEEDS%%,*}" ] && pictures+=(--checkpoint "$variant=$run/cls_$variant/last.pth")
    done
  done
  for variant in ${VARIANTS//,/ }; do
    rows+=("$(variant_title "$variant")=${scores[$variant]}")
  done
  step "stage 1 comparison (demo val images)"
  $PY -m utils.reports.tables --out "$OUT/stage1_comparison.md" --title "Stage 1 on the demo: localization maps" \
    --note "$OUT/eval/evidence/evidence.md" "${rows[@]}"
  $PY -m utils.reports.pictures --voc-root "$ROOT" --list "$ROOT/lists/val_cls.txt" --out "$OUT/stage1_maps.png" \
    "${SIZE_ARGS[@]}" "${pictures[@]}"
  # The paper's method feeds the next stages when it was run, else the last variant (docs/demo.md).
  variant=${VARIANTS##*,}
  [[ ,$VARIANTS, == *,learnable,* ]] && variant=learnable
  run=$OUT
  [ "${SEEDS%%,*}" = 0 ] || run=$OUT/seed${SEEDS%%,*}
  CLS_CKPT=$run/cls_$variant/last.pth
  STANDIN=$run/cls_pretrain/last.pth
}

if [ -z "$VOC_ROOT" ]; then
  DEFAULT_OUT=outputs/demo
  [ "$DEMO_SIZE" = 160 ] || DEFAULT_OUT=outputs/demo_$DEMO_SIZE  # never reuse another size's trained runs
  [ "$QUICK" = 0 ] || DEFAULT_OUT=outputs/demo_quick
  OUT=${OUT:-$DEFAULT_OUT}
  echo "No --voc-root given: running on the synthetic demo dataset in $OUT (see docs/demo.md)."
  ROOT=$OUT/VOC2012
  # the VOC recipe scaled to the demo's side N (160: the VOC values halved): test size N, scales 0.8N/N/1.2N,
  # training images squashed to 0.9N with 0.8N crops (VOC: 384 and 320 for a 320 test size)
  N=$DEMO_SIZE
  SIZE_ARGS=(--size "$N" --scales $(((8 * N + 5) / 10)) "$N" $(((12 * N + 5) / 10)))
  CLS_SIZE_SETS=(--set data.input_size=$(((9 * N + 5) / 10)) --set data.crop_size=$(((8 * N + 9) / 10))
                 --set data.test_size="$N")
  CLS_CONFIG=configs/cls_demo.yaml REFINE_CONFIG=configs/refine_demo.yaml
  V2_CONFIG=DeepLab-V2-PyTorch/configs/demo.yaml V3P_CONFIG=DeepLabV3Plus-Pytorch/configs/demo.yaml SEG=${SEG:-v2}
  V3P_PROTOCOLS=(full)  # the demo images are 160 px squares: crop-val at 160 would be the same images
  VAL_IDS=$ROOT/lists/val_cls.txt
  step "demo dataset"
  $PY -m utils.demo.data --out "$ROOT" --size "$DEMO_SIZE" "${DEMO_DATA[@]}"
  [ -n "$CLS_CKPT$REFINE_CKPT" ] || demo_stage1
  [ "$STAGE1_ONLY" = 1 ] && { step "stage 1 only: see $OUT/stage1_comparison.md"; exit 0; }
  REFINE_SETS=()  # the refinement backbone starts from the stand-in, as the original's starts from ImageNet
  STANDIN=${STANDIN:-$OUT/cls_pretrain/last.pth}
  [ -f "$STANDIN" ] && REFINE_SETS=(--set model.init_from="$STANDIN")
  REFINE_SETS+=(--set data.size="$DEMO_SIZE")  # the stored maps' size
else
  OUT=${OUT:-outputs/voc}
  ROOT=$VOC_ROOT
  SIZE_ARGS=()
  CLS_CONFIG=configs/cls_voc.yaml REFINE_CONFIG=configs/refine_voc.yaml
  V2_CONFIG=DeepLab-V2-PyTorch/configs/voc12.yaml V3P_CONFIG=DeepLabV3Plus-Pytorch/configs/voc.yaml SEG=${SEG:-none}
  V3P_PROTOCOLS=(full crop-val)  # standard VOC protocol, and the original's (the paper's numbers)
  VAL_IDS=$ROOT/ImageSets/Segmentation/val.txt
  [ "$GPUS" -gt 1 ] && V2_CONFIG=DeepLab-V2-PyTorch/configs/voc12_2gpu.yaml
  REFINE_SETS=()
  asset_path() { $PY -m utils.assets path --home "$ASSETS_HOME" "$1"; }  # where utils.assets puts an asset
  echo "VOC root: $ROOT; outputs in $OUT."
  if [ "$FETCH" = 1 ]; then
    groups=(voc)  # the images, the train_aug labels, the saliency maps
    case "$RELEASED" in
      checkpoints) groups+=(released) ;;
      labels) groups+=(released-labels) ;;
      deeplab) groups+=(deeplab-released) ;;
      *) [ -n "$REFINE_CKPT" ] || groups+=(train) ;;  # ImageNet VGG-16 for stages 1 and 2
    esac
    if [ "$RELEASED" != deeplab ]; then
      for net in ${SEG//,/ }; do [ "$net" = none ] || groups+=("$net"); done  # COCO init / ImageNet ResNet-101
    fi
    step "fetching: ${groups[*]}"
    $PY -m utils.assets fetch --voc-root "$ROOT" --home "$ASSETS_HOME" ${MIRROR:+--mirror "$MIRROR"} "${groups[@]}"
  fi
  case "$RELEASED" in
    checkpoints) REFINE_CKPT=${REFINE_CKPT:-$(asset_path refine-learnable)} ;;
    labels) $PY -m utils.assets verify --voc-root "$ROOT" pseudo-labels ;;  # not our own stage 3's labels
  esac
  step "image-level label lists"
  [ -f "$ROOT/lists/train_aug_cls.txt" ] || $PY -m utils.voc --voc-root "$ROOT"
  if [ -z "$CLS_CKPT$REFINE_CKPT$RELEASED" ]; then
    step "stage 1: DRS classifier"
    train train_cls.py "$CLS_CONFIG" "$ROOT" "$OUT/cls_drs"
    CLS_CKPT=$OUT/cls_drs/last.pth
  fi
fi

TRAIN_LIST=$ROOT/lists/train_cls.txt  # the original scores every stage on the train images
LABELS=$ROOT/refined_pseudo_segmentation_labels
reports=()
if [[ $RELEASED =~ ^(labels|deeplab)$ ]]; then
  echo "stages 1-3: skipped (--released $RELEASED)"
else
  if [ -z "$REFINE_CKPT" ]; then
    step "localization maps (train_aug)"
    $PY make_localization_maps.py --voc-root "$ROOT" --list "$ROOT/lists/train_aug_cls.txt" --checkpoint "$CLS_CKPT" \
      --out "$ROOT/localization_maps" --device "$DEVICE" "${SIZE_ARGS[@]}"
    $PY evaluate_maps.py --voc-root "$ROOT" --list "$TRAIN_LIST" --maps "$ROOT/localization_maps" \
      --out "$OUT/eval/localization_maps" --name "stage-1 maps" "${SIZE_ARGS[@]}"
    reports+=("stage-1 localization maps (α 0.2, saliency)=$OUT/eval/localization_maps/scores.json")
    step "stage 2: refinement network"
    train train_refine.py "$REFINE_CONFIG" "$ROOT" "$OUT/refine" "${REFINE_SETS[@]}"
    REFINE_CKPT=$OUT/refine/last.pth
  fi
  $PY evaluate_maps.py --voc-root "$ROOT" --list "$TRAIN_LIST" --checkpoint "$REFINE_CKPT" --stage refine \
    --out "$OUT/eval/refined_maps" --name "refined maps" --device "$DEVICE" "${SIZE_ARGS[@]}"
  reports+=("refined maps (α 0.2, saliency)=$OUT/eval/refined_maps/scores.json")

  step "stage 3: pseudo labels (train_aug)"
  $PY make_pseudo_labels.py --voc-root "$ROOT" --list "$ROOT/lists/train_aug_cls.txt" --checkpoint "$REFINE_CKPT" \
    --out "$LABELS" --device "$DEVICE" "${SIZE_ARGS[@]}"
  $PY evaluate_labels.py --voc-root "$ROOT" --list "$TRAIN_LIST" --labels "$LABELS" --out "$OUT/eval/pseudo_labels" \
    --name "pseudo labels"
  reports+=("pseudo labels (with 255 ignore)=$OUT/eval/pseudo_labels/scores.json")

  step "stages 1-3 on the train images"
  $PY -m utils.reports.tables --kind pipeline --out "$OUT/pipeline.md" --title "Stages 1-3: maps and pseudo labels" \
    "${reports[@]}"
fi
if [ "$RELEASED" = labels ]; then
  $PY evaluate_labels.py --voc-root "$ROOT" --list "$TRAIN_LIST" --labels "$LABELS" --out "$OUT/eval/pseudo_labels" \
    --name "released pseudo labels"
fi

seg_rows=()
[ "$RELEASED" = deeplab ] || seg_rows=("pseudo labels (train list, 255 ignored)=$OUT/eval/pseudo_labels/scores.json")
V2_CKPT=$OUT/deeplab_v2/checkpoint_final.pth V3P_CKPT=$OUT/deeplab_v3plus/checkpoint_final.pth
V2_SETS=()
[ -z "$VOC_ROOT" ] || [ "$ASSETS_HOME" = . ] || V2_SETS=(--set "model.init_from=$(asset_path coco-init)")
if [ "$RELEASED" = deeplab ]; then
  V2_CKPT=$(asset_path deeplabv2) V3P_CKPT=$(asset_path deeplabv3plus)
fi
seg_pictures=()  # label folders at the image size, drawn side by side
for net in ${SEG//,/ }; do
  case "$net" in
    v2)
      if [ "$RELEASED" = deeplab ]; then
        step "DeepLab-V2: the released checkpoint"
      else
        step "DeepLab-V2 on the pseudo labels"
        train DeepLab-V2-PyTorch/train.py "$V2_CONFIG" "$ROOT" "$OUT/deeplab_v2" --labels "$(basename "$LABELS")" \
          "${V2_SETS[@]}"
      fi
      $PY DeepLab-V2-PyTorch/eval.py --config "$V2_CONFIG" --voc-root "$ROOT" --list "$VAL_IDS" \
        --checkpoint "$V2_CKPT" --out "$OUT/eval/deeplab_v2" --crf --device "$DEVICE"
      seg_rows+=("DeepLab-V2 (val)=$OUT/eval/deeplab_v2/scores.json"
                 "DeepLab-V2 + CRF (val)=$OUT/eval/deeplab_v2/scores_crf.json")
      seg_pictures+=(--labels "DeepLab-V2=$OUT/eval/deeplab_v2" --labels "V2 + CRF=$OUT/eval/deeplab_v2/crf")
      ;;
    v3p)
      if [ "$RELEASED" = deeplab ]; then
        step "DeepLab-V3+: the released checkpoint"
      else
        step "DeepLab-V3+ on the pseudo labels"
        train DeepLabV3Plus-Pytorch/main.py "$V3P_CONFIG" "$ROOT" "$OUT/deeplab_v3plus" --labels "$(basename "$LABELS")"
      fi
      for protocol in "${V3P_PROTOCOLS[@]}"; do
        extra=()
        [ "$protocol" = crop-val ] && extra=(--crop-val)
        $PY DeepLabV3Plus-Pytorch/eval.py --config "$V3P_CONFIG" --voc-root "$ROOT" --list "$VAL_IDS" \
          --checkpoint "$V3P_CKPT" --out "$OUT/eval/deeplab_v3plus_$protocol" --crf \
          --device "$DEVICE" "${extra[@]}"
        seg_rows+=("DeepLab-V3+ (val, $protocol)=$OUT/eval/deeplab_v3plus_$protocol/scores.json"
                   "DeepLab-V3+ + CRF (val, $protocol)=$OUT/eval/deeplab_v3plus_$protocol/scores_crf.json")
      done
      seg_pictures+=(--labels "DeepLab-V3+=$OUT/eval/deeplab_v3plus_full"
                     --labels "V3+ + CRF=$OUT/eval/deeplab_v3plus_full/crf")
      ;;
  esac
done
if [ ${#seg_pictures[@]} -gt 0 ]; then
  $PY -m utils.reports.tables --kind pipeline --out "$OUT/segmentation.md" \
    --title "Segmentation networks (val) and their training labels" "${seg_rows[@]}"
  $PY -m utils.reports.pictures --voc-root "$ROOT" --list "$VAL_IDS" --out "$OUT/segmentation.png" "${seg_pictures[@]}"
fi
if [ ${#CURVES[@]} -gt 0 ]; then
  step "training curves"
  $PY -m utils.reports.curves --out "$OUT/training_curves.png" "${CURVES[@]}"
fi
step "finished: reports in $OUT"
