"""Train DeepLab-V3+ (ResNet-101) on the DRS pseudo labels. Entry point only: the code is in models/ and utils/.

    python DeepLabV3Plus-Pytorch/main.py --voc-root /data/VOC2012 --labels refined_pseudo_segmentation_labels
    torchrun --nproc_per_node 2 DeepLabV3Plus-Pytorch/main.py --voc-root /data/VOC2012     # DDP + synchronised BN

Writes ``<out>/checkpoint_final.pth`` (always; never chosen on val), ``checkpoint_<it>.pth`` and ``last.pth``
every SOLVER.ITER_SAVE iterations (``--resume auto``), ``config.yaml``, ``log.jsonl``.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from utils import checkpoints, cli, config  # noqa: E402
from utils.seg.data import ImageNetTrainTransform  # noqa: E402
from utils.seg.evaluation import imagenet_input  # noqa: E402
from utils.seg.training import (  # noqa: E402
    deeplab_v3plus_schedule,
    deeplab_v3plus_trainer,
    load_config,
    train_on_labels,
)


def build_model(cfg):
    m = cfg["MODEL"]
    args = {"num_classes": m["NUM_CLASSES"], "depth": m["DEPTH"], "output_stride": m["OUTPUT_STRIDE"],
            "separable": bool(m["SEPARABLE"]), "width": m["WIDTH"], "head_channels": m["HEAD_CHANNELS"],
            "project_channels": m["PROJECT_CHANNELS"], "n_blocks": m["N_BLOCKS"]}
    if m["PRETRAINED"] and (args["width"] != 64 or args["n_blocks"]):
        raise config.ConfigError("MODEL.PRETRAINED needs the ImageNet ResNet's shape: MODEL.WIDTH 64 and "
                                 f"MODEL.N_BLOCKS null, not {args['width']} and {args['n_blocks']}")
    weights = None
    if m["PRETRAINED"] and not m["PRETRAINED_PATH"]:
        weights = "IMAGENET1K_V1"
    try:
        model = models.build("deeplab_v3plus", **args, weights=weights)
    except Exception as error:  # offline: torchvision cannot download the ImageNet weights
        raise checkpoints.CheckpointError(
            f"ImageNet ResNet-{args['depth']} weights unavailable ({type(error).__name__}): put the torchvision file "
            "in the torch hub cache, or set MODEL.PRETRAINED_PATH, or MODEL.PRETRAINED false") from None
    if m["PRETRAINED_PATH"]:
        state = checkpoints.load_file(m["PRETRAINED_PATH"])
        missing, unexpected = model.backbone.load_state_dict(
            {k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
        if missing or unexpected:
            raise checkpoints.CheckpointError(f"{m['PRETRAINED_PATH']} is not a torchvision ResNet-{args['depth']}")
    model.set_backbone_bn_momentum(m["BACKBONE_BN_MOMENTUM"])
    return model, args


def run(args):
    cfg = load_config(args)
    data, solver = cfg["DATASET"], cfg["SOLVER"]
    return train_on_labels(
        cfg, args, name="DeepLab-V3+",
        out_dir=Path(args.out or REPO / "outputs" / "deeplab_v3plus" / cfg["EXP"]["ID"]),
        transform=ImageNetTrainTransform(data["SCALE_RANGE"], data["CROP_SIZE"], data["IGNORE_LABEL"]),
        batch=solver["BATCH_SIZE"], workers=solver["NUM_WORKERS"], build_model=build_model,
        make_trainer=deeplab_v3plus_trainer, make_schedule=deeplab_v3plus_schedule,
        batch_text=f"batch {solver['BATCH_SIZE']}", load_input=imagenet_input)


def main(argv=None):
    parser = cli.training_parser(__doc__, REPO / "DeepLabV3Plus-Pytorch" / "configs" / "voc.yaml", labels=True)
    return cli.main(run, parser, argv)


if __name__ == "__main__":
    main()
