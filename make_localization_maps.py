"""Multi-scale localization maps of a stage-1 classifier (original §3.2).

Writes ``<out>/<id>.npy``: uint8 (20, S, S), S = the test size (320 for VOC), classes absent from the image
all zero. Existing outputs are skipped, so an interrupted run resumes where it stopped.

    python make_localization_maps.py --voc-root VOC2012 --list VOC2012/lists/train_aug_cls.txt \
        --checkpoint checkpoints/DRS_learnable/best.pth --out VOC2012/localization_maps
"""

from pathlib import Path

import torch

from utils import checkpoints, cli, voc
from utils.distributed import inference_device
from utils.io import claim_folder, file_digest
from utils.wsss.cam import (
    LOCALIZATION_SCALES,
    LOCALIZATION_SIZE,
    add_generation_options,
    generation_batch_size,
    with_precision,
    write_localization_maps,
)
from utils.wsss.transforms import eval_transform


def build_parser():
    parser = cli.parser(__doc__)
    parser.add_argument("--voc-root", required=True, help="the VOC2012 folder")
    parser.add_argument("--list", required=True, help="'<id> <c1> ...' list or a plain id list")
    parser.add_argument("--checkpoint", required=True, help="our checkpoint or the released DRS_learnable.pth format")
    parser.add_argument("--out", default=None, help="output folder (default: <voc-root>/localization_maps)")
    parser.add_argument("--delta", type=float, default=None, help="fixed-delta DRS value (original checkpoints only)")
    parser.add_argument("--size", type=int, default=LOCALIZATION_SIZE, help="test size S (images squashed to S x S)")
    parser.add_argument("--scales", type=int, nargs="+", default=list(LOCALIZATION_SCALES))
    add_generation_options(parser)
    cli.add_device(parser)
    return parser


def run(args):
    out_dir = Path(args.out) if args.out else Path(args.voc_root) / "localization_maps"
    entries = voc.read_list(args.list, voc_root=args.voc_root)
    device = inference_device(args.device)
    model, model_args = checkpoints.load_classifier(args.checkpoint, delta=args.delta, map_location=device)
    made_with = {"made_by": "make_localization_maps.py", "checkpoint_sha256": file_digest(args.checkpoint),
                 "delta": args.delta, "size": args.size, "scales": args.scales}
    claim_folder(out_dir, with_precision(made_with, args.precision), "localization maps")
    todo = [e for e in entries if not (out_dir / f"{e[0]}.npy").exists()]
    print(f"localization maps: {len(entries) - len(todo)} of {len(entries)} already in {out_dir}, "
          f"{len(todo)} to write (model {model_args}, scales {args.scales}, size {args.size}, {args.precision})")
    if todo:
        dataset = voc.VOCDataset(args.voc_root, todo, eval_transform(args.size))
        loader = torch.utils.data.DataLoader(dataset, batch_size=generation_batch_size(args.batch_size, device),
                                             num_workers=args.num_workers, collate_fn=voc.collate)
        write_localization_maps(model, loader, out_dir, device, scales=args.scales, precision=args.precision)
    return out_dir


def main(argv=None):
    return cli.main(run, build_parser(), argv)


if __name__ == "__main__":
    main()
