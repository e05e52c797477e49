"""Stage 3: pseudo segmentation labels from the refined maps and saliency (original §5).

    python make_pseudo_labels.py --voc-root VOC2012 --list VOC2012/lists/train_aug_cls.txt \
        --checkpoint checkpoints/Refine_DRS_learnable/last.pth --out VOC2012/refined_pseudo_segmentation_labels

Writes ``<out>/<id>.png``: palette PNGs at the original image size, 0 = background, 1..20 = classes,
255 = ignore. Existing PNGs are skipped, so an interrupted run resumes. Options beyond the original (off by
default): ``--stage cls`` (labels from the stage-1 classifier's maps), ``--no-saliency --bg-threshold T``
(saliency-free labels), ``--crf`` (dense-CRF refinement, parallel over ``--jobs`` processes).
"""

from pathlib import Path

import numpy as np
import torch

from utils import checkpoints, cli, voc
from utils.crf import CRFParams, crf_from_labels, run_parallel
from utils.distributed import inference_device
from utils.io import claim_folder, file_digest, progress, save_label_png
from utils.wsss.cam import (
    LOCALIZATION_SCALES,
    LOCALIZATION_SIZE,
    add_generation_options,
    generation_batch_size,
    multiscale_maps,
    score_function,
    with_precision,
)
from utils.wsss.pseudo_labels import pseudo_label, threshold_label
from utils.wsss.transforms import eval_transform


def build_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("--voc-root", required=True, help="the VOC2012 folder")
    parser.add_argument("--list", required=True, help="'<id> <c1> ...' list or a plain id list")
    parser.add_argument("--checkpoint", required=True, help="refinement net (ours or Refine_DRS_learnable.pth format)")
    parser.add_argument("--out", default=None, help="default: <voc-root>/refined_pseudo_segmentation_labels")
    parser.add_argument("--stage", choices=("refine", "cls"), default="refine",
                        help="maps of the refinement net (original) or straight from the stage-1 classifier")
    parser.add_argument("--delta", type=float, default=None, help="fixed-delta DRS value (--stage cls, original ckpt)")
    parser.add_argument("--alpha", type=float, default=0.2)
    parser.add_argument("--no-saliency", action="store_true", help="no saliency: background where no class > T")
    parser.add_argument("--bg-threshold", type=float, default=0.3, help="T for --no-saliency")
    parser.add_argument("--crf", action="store_true", help="refine the labels with a dense CRF")
    parser.add_argument("--jobs", type=int, default=None, help="CRF processes (default: all CPUs)")
    parser.add_argument("--size", type=int, default=LOCALIZATION_SIZE, help="images squashed to size x size")
    parser.add_argument("--scales", type=int, nargs="+", default=list(LOCALIZATION_SCALES))
    add_generation_options(parser)
    cli.add_device(parser)
    return parser


def build_score_fn(args, device):
    """The maps to label: the refinement net's raw output, or the classifier's normalised CAM."""
    if args.stage == "cls":
        model, _ = checkpoints.load_classifier(args.checkpoint, delta=args.delta, map_location=device)
        return score_function(model.eval(), "class_maps", args.precision), True
    model, _ = checkpoints.load_refiner(args.checkpoint, map_location=device)
    return score_function(model.eval(), "score_maps", args.precision), False


def label_images(args, entries, out_dir, device, score_fn, normalize):
    masks = () if args.no_saliency else ("saliency",)
    dataset = voc.VOCDataset(args.voc_root, entries, eval_transform(args.size, resize_masks=False), masks=masks)
    loader = torch.utils.data.DataLoader(dataset, batch_size=generation_batch_size(args.batch_size, device),
                                         num_workers=args.num_workers, collate_fn=voc.collate)
    written = []
    for batch in progress(loader, desc="pseudo labels", unit="batch"):
        maps = multiscale_maps(score_fn, batch["image"].to(device), batch["classes"].to(device), batch["size"],
                               args.scales, normalize=normalize)
        for index, image_id in enumerate(batch["id"]):
            if args.no_saliency:
                label = threshold_label(maps[index], args.bg_threshold)
            else:
                salient = batch["saliency"][index] > voc.SALIENCY_THRESHOLD
                label = pseudo_label(maps[index], salient.to(device), alpha=args.alpha)
            path = out_dir / f"{image_id}.png"
            if args.crf:
                path = out_dir / ".raw" / f"{image_id}.png"  # the CRF pass writes the final file
            save_label_png(path, label.cpu().numpy())
            written.append(image_id)
    return written


def _crf_one(voc_root, raw_path, out_path):
    image = np.asarray(voc.load_image(voc.image_path(voc_root, Path(raw_path).stem)))
    label = np.array(voc.load_label(raw_path), dtype=np.uint8)
    save_label_png(out_path, crf_from_labels(image, label, params=CRFParams()))
    Path(raw_path).unlink()


def settings(args):
    """What the labels depend on (recorded in the output folder, see :func:`utils.io.claim_folder`)."""
    made_with = {"made_by": "make_pseudo_labels.py", "checkpoint_sha256": file_digest(args.checkpoint),
                 "stage": args.stage, "delta": args.delta, "alpha": args.alpha, "saliency": not args.no_saliency,
                 "bg_threshold": args.bg_threshold if args.no_saliency else None, "crf": args.crf, "size": args.size,
                 "scales": args.scales}
    return with_precision(made_with, args.precision)


def run(args):
    out_dir = Path(args.out) if args.out else Path(args.voc_root) / "refined_pseudo_segmentation_labels"
    entries = voc.read_list(args.list, voc_root=args.voc_root)
    device = inference_device(args.device)
    score_fn, normalize = build_score_fn(args, device)  # a bad checkpoint is refused before the folder is claimed
    claim_folder(out_dir, settings(args), "pseudo labels")
    todo = [e for e in entries if not (out_dir / f"{e[0]}.png").exists()]
    print(f"pseudo labels: {len(entries) - len(todo)} of {len(entries)} already in {out_dir}, {len(todo)} to "
          f"write ({args.stage} maps, {'no saliency' if args.no_saliency else 'saliency background'}"
          f"{', dense CRF' if args.crf else ''})", flush=True)
    raw_dir = out_dir / ".raw"  # labels before the CRF pass
    pending = [e for e in todo if not (args.crf and (raw_dir / f"{e[0]}.png").exists())]
    if pending:
        label_images(args, pending, out_dir, device, score_fn, normalize)
    if args.crf and todo:
        jobs = [(args.voc_root, raw_dir / f"{i}.png", out_dir / f"{i}.png") for i, _ in todo]
        run_parallel(_crf_one, jobs, args.jobs)
    return out_dir


def main(argv=None):
    return cli.main(run, build_parser(), argv)


if __name__ == "__main__":
    main()
