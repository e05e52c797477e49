"""Evaluate DeepLab-V2 (MSC, max fusion) on full images: the original's ``main.py test`` + ``main.py crf``.

    python DeepLab-V2-PyTorch/eval.py --voc-root /data/VOC2012 --list /data/VOC2012/lists/val_cls.txt \
        --checkpoint outputs/deeplab_v2/voc12/checkpoint_final.pth --out outputs/deeplab_v2/voc12/eval

CKPT is ours or the released ``base.*`` state dict. Writes to OUT: ``logit/<id>.npy`` (stride-8 logits),
``<id>.png``, ``crf/<id>.png``, ``scores.json``, ``scores_crf.json`` and ``scores.md``. Existing logits and
CRF labels are kept, so an interrupted run resumes.
"""

import functools
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from utils import checkpoints, config  # noqa: E402
from utils.io import claim_folder, file_digest  # noqa: E402
from utils.seg.evaluation import caffe_input, crf_params_from_config, eval_inputs, eval_main, eval_parser, evaluate  # noqa: E402

DEFAULT_CONFIG = Path(__file__).resolve().parent / "configs" / "voc12.yaml"


def settings(cfg):
    """(BGR mean, GT folder name, CRF parameters) from the config; a missing key is a ConfigError."""
    try:
        mean_bgr = [float(value) for value in cfg["data"]["mean_bgr"]]
        return mean_bgr, cfg["data"]["val_labels"], crf_params_from_config(cfg["crf"])
    except (KeyError, TypeError, ValueError) as error:
        raise config.ConfigError(f"config lacks or mistypes a key needed for evaluation: {error}") from None


def load_model(path, cfg):
    model, _ = checkpoints.load_deeplab_v2(path)
    # the released checkpoints store no MSC scales: the config decides
    model.scales = tuple(float(s) for s in cfg["model"]["msc_scales"])
    return model


def run(args):
    cfg = config.load(args.config, args.set)
    mean_bgr, val_labels, crf_params = settings(cfg)
    voc_root, gt_dir, ids, device = eval_inputs(args, val_labels)
    model = load_model(args.checkpoint, cfg)
    claim_folder(args.out, {"made_by": "DeepLab-V2-PyTorch/eval.py", "checkpoint_sha256": file_digest(args.checkpoint),
                            "msc_scales": list(model.scales), "mean_bgr": mean_bgr, "crf": vars(crf_params)},
                 "DeepLab-V2 logits and labels")
    print(f"DeepLab-V2 evaluation: {len(ids)} images of {args.list} on {device}, GT {gt_dir}, "
          f"CRF {'on' if args.crf else 'off'} -> {args.out}", flush=True)
    return evaluate(model, voc_root, ids, args.out, functools.partial(caffe_input, mean_bgr=mean_bgr),
                    gt_dir=gt_dir, device=device, crf_params=crf_params if args.crf else None, jobs=args.jobs,
                    title=f"DeepLab-V2: {len(ids)} images of {args.list}")


def main(argv=None):
    return eval_main(run, eval_parser(__doc__, DEFAULT_CONFIG, "DeepLab-V2"), argv)


if __name__ == "__main__":
    main()
