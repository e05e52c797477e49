"""Train DeepLab-V2 (ResNet-101, MSC) on the DRS pseudo labels. Entry point only: the code is in models/ and utils/.

    python DeepLab-V2-PyTorch/train.py --config DeepLab-V2-PyTorch/configs/voc12_2gpu.yaml --voc-root /data/VOC2012
    torchrun --nproc_per_node 2 DeepLab-V2-PyTorch/train.py --config ... --voc-root /data/VOC2012

Writes ``<out>/checkpoint_final.pth`` (what eval.py reads), ``checkpoint_<it>.pth`` and ``last.pth`` every
SOLVER.ITER_SAVE iterations (``--resume auto`` continues from ``last.pth``), ``config.yaml``, ``log.jsonl``.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.deeplab_v2 import deeplab_v2_msc  # noqa: E402
from utils import checkpoints, config, voc  # noqa: E402
from utils.distributed import Runtime  # noqa: E402
from utils.io import atomic_write  # noqa: E402
from utils.seg_data import CaffeTrainTransform, SegmentationTrainSet, bgr_mean, make_loader  # noqa: E402
from utils.seg_eval import validation_miou  # noqa: E402
from utils.seg_training import deeplab_v2_recipe, train  # noqa: E402
from utils.training import resume_path  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "DeepLab-V2-PyTorch" / "configs" / "voc12.yaml"))
    parser.add_argument("--voc-root", default=None, help="overrides DATASET.ROOT (the VOC2012 folder)")
    parser.add_argument("--labels", default=None, help="overrides DATASET.LABELS (the original's --gt_path)")
    parser.add_argument("--out-dir", default=None, help="default: outputs/deeplab_v2/<EXP.ID>")
    parser.add_argument("--resume", default=None, help="a checkpoint, or 'auto' for <out>/last.pth if present")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def build_model(cfg):
    m = cfg["MODEL"]
    args = {"n_classes": cfg["DATASET"]["N_CLASSES"], "n_blocks": list(m["N_BLOCKS"]),
            "atrous_rates": list(m["ATROUS_RATES"]), "width": float(m["WIDTH"]), "scales": list(m["MSC_SCALES"])}
    model = deeplab_v2_msc(**args)
    init = m.get("INIT_MODEL")
    if init:
        path = Path(init) if Path(init).is_absolute() else REPO / init
        if not path.is_file():
            raise checkpoints.CheckpointError(
                f"COCO init {path} not found: download deeplabv1_resnet101-coco.pth there (see "
                "DeepLab-V2-PyTorch/README.md) or set MODEL.INIT_MODEL")
        checkpoints.load_coco_init(model.base, path)
    return model, args


def validation(cfg):
    """The optional in-training validation (VAL.EVERY > 0) on DATASET.SPLIT.VAL, against DATASET.VAL_LABELS."""
    data = cfg["DATASET"]
    if not cfg.get("VAL", {}).get("EVERY"):
        return None
    ids = [i for i, _ in voc.list_entries(data["ROOT"], data["SPLIT"]["VAL"])]
    mean = [cfg["IMAGE"]["MEAN"][c] for c in "BGR"]

    def validate(model):
        device = next(model.parameters()).device
        return validation_miou(model, data["ROOT"], ids, Path(data["ROOT"]) / data["VAL_LABELS"], mean, device)

    return validate


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = config.load(args.config, args.set)
        data = cfg["DATASET"]
        if args.voc_root:
            data["ROOT"] = args.voc_root
        if args.labels:
            data["LABELS"] = args.labels
        if not data["ROOT"]:
            raise voc.DataError("no VOC root: pass --voc-root or set DATASET.ROOT")
        out_dir = Path(args.out_dir or REPO / "outputs" / "deeplab_v2" / cfg["EXP"]["ID"])
        runtime = Runtime(args.device)
        solver = cfg["SOLVER"]
        transform = CaffeTrainTransform(data["SCALES"], cfg["IMAGE"]["SIZE"]["TRAIN"], bgr_mean(cfg["IMAGE"]["MEAN"]),
                                        data["IGNORE_LABEL"])
        dataset = SegmentationTrainSet(data["ROOT"], voc.list_entries(data["ROOT"], data["SPLIT"]["TRAIN"]),
                                       data["LABELS"], transform)
        batch = solver["BATCH_SIZE"]["TRAIN"]
        loader = make_loader(dataset, batch, cfg["DATALOADER"]["NUM_WORKERS"], solver["SEED"], runtime)
        model, model_args = build_model(cfg)
        model.to(runtime.device)
        if runtime.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(out_dir / "config.yaml", lambda tmp: Path(tmp).write_text(config.dump(cfg)))
            print(f"DeepLab-V2: {len(dataset)} images with labels from {dataset.label_dir}, {solver['ITER_MAX']} "
                  f"iterations of {batch} x {solver['ITER_SIZE']} images on {runtime.world_size} process(es), "
                  f"{runtime.device}", flush=True)
        final = train(deeplab_v2_recipe(cfg, model), cfg, model, model_args, loader, runtime, out_dir,
                      resume_path(args.resume, out_dir),
                      show_progress=not args.no_progress, validate_fn=validation(cfg))
        runtime.close()
        return final
    except (voc.DataError, checkpoints.CheckpointError, config.ConfigError, ValueError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
