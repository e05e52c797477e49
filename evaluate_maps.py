"""Score localization maps against the GT on a list (original §3.3 and the saliency-free CAM protocol).

From stored maps (uint8 ``<id>.npy``, as make_localization_maps.py writes them)::

    python evaluate_maps.py --voc-root VOC2012 --list VOC2012/lists/train_cls.txt --maps VOC2012/localization_maps \
        --out results/maps

or straight from a classifier checkpoint (maps computed at the original image size, as test_cls.py did; this
also reports the classification mAP and, for a DRS classifier, how hard each DRS layer suppresses), or from
a refinement net (``--stage refine``, as test_refine.py did)::

    python evaluate_maps.py --voc-root VOC2012 --list ... --checkpoint best.pth --out results/maps

Writes ``scores.json`` and ``scores.md`` (per-class IoU, both protocols) to ``--out``.
"""

from pathlib import Path

import torch
import torch.nn.functional as F

from models.drs import SuppressionMonitor
from utils import checkpoints, cli, voc
from utils.distributed import inference_device
from utils.io import atomic_write, progress, save_json
from utils.metrics import markdown_table
from utils.wsss.cam import LOCALIZATION_SCALES, LOCALIZATION_SIZE, multiscale_cam, multiscale_maps
from utils.wsss.evaluation import MapEvaluator, average_precision
from utils.wsss.transforms import eval_transform


def build_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("--voc-root", required=True)
    parser.add_argument("--list", required=True, help="'<id> <c1> ...' list or a plain id list")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--maps", help="folder of stored uint8 <id>.npy maps")
    source.add_argument("--checkpoint", help="classifier or refinement-net checkpoint (ours or the released format)")
    parser.add_argument("--stage", choices=("cls", "refine"), default="cls",
                        help="what --checkpoint holds: the stage-1 classifier (CAMs) or the refinement net (raw maps)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", default=None, help="title for the tables (default: the maps/checkpoint name)")
    parser.add_argument("--alpha", type=float, default=0.2)
    parser.add_argument("--delta", type=float, default=None, help="fixed-delta DRS value (original checkpoints)")
    parser.add_argument("--size", type=int, default=LOCALIZATION_SIZE, help="test size for --checkpoint")
    parser.add_argument("--scales", type=int, nargs="+", default=list(LOCALIZATION_SCALES))
    cli.add_device(parser)
    parser.add_argument("--num-workers", type=int, default=2)
    return parser


def stored_maps(maps_dir, image_id, size):
    maps = voc.maps_to_scores(voc.load_localization_map(Path(maps_dir) / f"{image_id}.npy"))[None]
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=True)[0]


def evaluate(args):
    root = Path(args.voc_root)
    entries = voc.read_list(args.list, voc_root=root)
    masks = ["label"] + [m for m in ("saliency", "parts") if (root / voc.MASK_FOLDERS[m]).is_dir()]
    dataset = voc.VOCDataset(root, entries, eval_transform(args.size, resize_masks=False), masks=masks)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=args.num_workers, collate_fn=voc.collate)
    evaluator = MapEvaluator(alpha=args.alpha)
    model, device, logits, targets = None, None, [], []
    if args.checkpoint:
        device = inference_device(args.device)
        if args.stage == "cls":
            model, _ = checkpoints.load_classifier(args.checkpoint, delta=args.delta, map_location=device)
        else:
            model, _ = checkpoints.load_refiner(args.checkpoint, map_location=device)
        model.eval()
    suppression = SuppressionMonitor(model) if model is not None else None
    for batch in progress(loader, desc="evaluating maps", unit="image"):
        image_id, size = batch["id"][0], batch["size"][0]
        classes = batch["classes"]
        if model is None:
            maps = stored_maps(args.maps, image_id, size)
        elif args.stage == "refine":
            maps = multiscale_maps(model.score_maps, batch["image"].to(device), classes.to(device), [size],
                                   args.scales)[0].cpu()
        else:
            images = batch["image"].to(device)
            with torch.no_grad(), suppression:
                logits.append(model(images).cpu())
                maps = multiscale_cam(model, images, classes.to(device), args.scales, size=size)[0].cpu()
            targets.append(classes)
        evaluator.add(maps, classes[0].numpy(), batch["label"][0].numpy(),
                      saliency=batch["saliency"][0].numpy() if "saliency" in batch else None,
                      parts=batch["parts"][0].numpy() if "parts" in batch else None)
    results = {"source": args.maps or args.checkpoint, "list": args.list, "images": len(entries),
               "alpha": args.alpha, **evaluator.results()}
    if logits:
        per_class, mean_ap = average_precision(torch.cat(logits).numpy(), torch.cat(targets).numpy())
        results["classification"] = {"mAP": mean_ap, "class_AP": per_class}
    if suppression is not None and suppression.layers:
        results["suppression"] = suppression.results()
    return results


def write_report(results, out_dir, name):
    out_dir = Path(out_dir)
    save_json(out_dir / "scores.json", results)
    tables = {}
    if "drs_protocol" in results:
        tables[f"{name}: α={results['alpha']}, saliency bg"] = results["drs_protocol"]
    tables[f"{name}: bg threshold {results['cam_protocol']['best_threshold']:.2f}"] = results["cam_protocol"]
    lines = [f"# Localization maps: {name}", "", f"{results['images']} images of {results['list']}", "",
             markdown_table(tables)]
    if "classification" in results:
        lines += [f"Classification mAP: {100 * results['classification']['mAP']:.1f}", ""]
    if "regions" in results:
        r = results["regions"]
        lines += [f"Mean map value: part {r['part']:.3f}, body {r['body']:.3f}, background {r['background']:.3f}, "
                  f"body/part {r['body_part_ratio']:.3f}", ""]
        below = r["below_alpha"]
        lines += [f"Own-class map below α: part {100 * below['part']:.1f} %, body {100 * below['body']:.1f} %, "
                  f"background {100 * below['background']:.1f} % of pixels", ""]
        if "drs_correct" in r:
            right = r["drs_correct"]
            lines += [f"Labelled right (DRS protocol): part {100 * right['part']:.1f} %, body "
                      f"{100 * right['body']:.1f} %, background {100 * right['background']:.1f} %", ""]
    if "suppression" in results:
        lines += ["DRS suppression over the forward passes above, the test size and every CAM scale (g: the "
                  "learned gate or the fixed delta, mean over images and channels; clipped: share of positive "
                  "activations above g times their channel's peak):", "",
                  "| layer | g | clipped |", "|---|---|---|"]
        lines += [f"| {s['layer']} | {s['ratio']:.3f} | {100 * s['clipped']:.1f} % |" for s in results["suppression"]]
        lines += [""]
    atomic_write(out_dir / "scores.md", lambda tmp: Path(tmp).write_text("\n".join(lines)))


def run(args):
    results = evaluate(args)
    name = args.name or Path(args.maps or args.checkpoint).name
    write_report(results, args.out, name)
    summary = f"{name}: CAM-protocol mIoU {100 * results['cam_protocol']['mean_iou']:.1f}"
    if "drs_protocol" in results:
        summary += f", DRS-protocol mIoU {100 * results['drs_protocol']['mean_iou']:.1f}"
    print(summary + f" -> {Path(args.out) / 'scores.md'}")
    return results


def main(argv=None):
    return cli.main(run, build_parser(), argv)


if __name__ == "__main__":
    main()
