"""Evaluate DeepLab-V3+ with and without dense CRF: the original's ``eval.py`` (original §8.3).

    python DeepLabV3Plus-Pytorch/eval.py --voc-root /data/VOC2012 \
        --list /data/VOC2012/ImageSets/Segmentation/val.txt --checkpoint CKPT --out DIR --crop-val

CKPT is ours or the released ``{'model_state': ...}`` file. ``--crop-val`` is run.sh's protocol (the numbers
the paper reports): each image and its GT resized so the shorter side is 513 and centre-cropped to 513x513;
without it, full images against the full GT. Writes to OUT: ``logit/<id>.npy`` (float16, at the input
resolution, as the original saves them), ``<id>.png``, ``crf/<id>.png``, ``scores.json``, ``scores_crf.json``
and ``scores.md``. Existing logits and CRF labels are kept, so an interrupted run resumes.
"""

import functools
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils import checkpoints, config  # noqa: E402
from utils.io import claim_folder, file_digest  # noqa: E402
from utils.seg.evaluation import (  # noqa: E402
    crf_params_from_config,
    crop_gt,
    eval_inputs,
    eval_main,
    eval_parser,
    evaluate,
    imagenet_input,
)

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "voc.yaml"


def build_parser():
    parser = eval_parser(__doc__, DEFAULT_CONFIG, "DeepLab-V3+")
    parser.add_argument("--crop-val", action="store_true", help="resize + centre crop to eval.crop_size (run.sh)")
    return parser


def settings(cfg):
    """(GT folder name, crop size, CRF parameters, model args for a released file); a missing key is a
    ConfigError."""
    try:
        model = cfg["model"]
        released_args = {"output_stride": int(model["output_stride"]), "separable": bool(model["separable"])}
        if released_args["output_stride"] not in (8, 16):
            raise ValueError(f"model.output_stride must be 8 or 16, got {released_args['output_stride']}")
        return (cfg["data"]["val_labels"], int(cfg["eval"]["crop_size"]), crf_params_from_config(cfg["crf"]),
                released_args)
    except (KeyError, TypeError, ValueError) as error:
        raise config.ConfigError(f"config lacks or mistypes a key needed for evaluation: {error}") from None


def run(args):
    cfg = config.load(args.config, args.set)
    val_labels, crop_size, crf_params, released_args = settings(cfg)
    voc_root, gt_dir, ids, device = eval_inputs(args, val_labels)
    crop = crop_size if args.crop_val else None
    model, _ = checkpoints.load_deeplab_v3plus(args.checkpoint, released_args=released_args)
    # one protocol per folder: the kept logits of one would be scored under the other
    made_with = {"made_by": "DeepLabV3Plus-Pytorch/eval.py", "checkpoint_sha256": file_digest(args.checkpoint),
                 "crop_val": crop, **released_args, "crf": vars(crf_params)}
    claim_folder(args.out, made_with, "DeepLab-V3+ logits and labels")
    protocol = f"crop_val {crop}" if crop else "full images"
    print(f"DeepLab-V3+ evaluation: {len(ids)} images of {args.list} ({protocol}) on {device}, GT {gt_dir}, "
          f"CRF {'on' if args.crf else 'off'} -> {args.out}", flush=True)
    return evaluate(model, voc_root, ids, args.out, functools.partial(imagenet_input, crop=crop), gt_dir=gt_dir,
                    device=device, crf_params=crf_params if args.crf else None, jobs=args.jobs,
                    title=f"DeepLab-V3+: {len(ids)} images of {args.list}, {protocol}",
                    gt_transform=functools.partial(crop_gt, size=crop) if crop else None, logit_dtype=np.float16)


def main(argv=None):
    return eval_main(run, build_parser(), argv)


if __name__ == "__main__":
    main()
