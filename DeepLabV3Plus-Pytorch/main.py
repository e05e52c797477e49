"""Train DeepLab-V3+ (ResNet-101) on the DRS pseudo labels. Entry point only: the code is in models/ and utils/.

    python DeepLabV3Plus-Pytorch/main.py --voc-root /data/VOC2012 --labels refined_pseudo_segmentation_labels
    torchrun --nproc_per_node 2 DeepLabV3Plus-Pytorch/main.py --voc-root /data/VOC2012     # DDP + synchronised BN

Writes ``<out>/checkpoint_final.pth`` (always; never chosen on val), ``checkpoint_<it>.pth`` and ``last.pth``
every train.save_every updates (``--resume auto``), ``config.yaml``, ``log.jsonl``.
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
    train_on_labels,
)


def build_model(cfg):
    m = cfg["model"]
    args = {"num_classes": m["num_classes"], "depth": m["depth"], "output_stride": m["output_stride"],
            "separable": bool(m["separable"]), "stem_channels": m["stem_channels"],
            "head_channels": m["head_channels"], "project_channels": m["project_channels"], "n_blocks": m["n_blocks"]}
    if m["pretrained"] and (args["stem_channels"] != 64 or args["n_blocks"]):
        raise config.ConfigError("model.pretrained needs the ImageNet ResNet's shape: model.stem_channels 64 and "
                                 f"model.n_blocks null, not {args['stem_channels']} and {args['n_blocks']}")
    weights = None
    if m["pretrained"] and not m["pretrained_path"]:
        weights = "IMAGENET1K_V1"
    try:
        model = models.build("deeplab_v3plus", **args, weights=weights)
    except Exception as error:  # offline: torchvision cannot download the ImageNet weights
        raise checkpoints.CheckpointError(
            f"ImageNet ResNet-{args['depth']} weights unavailable ({type(error).__name__}): `python -m utils.assets "
            f"fetch resnet{args['depth']}-imagenet` puts them in the torch hub cache (ResNet-101), or set "
            "model.pretrained_path, or model.pretrained false") from None
    if m["pretrained_path"]:
        state = checkpoints.load_file(m["pretrained_path"])
        missing, unexpected = model.backbone.load_state_dict(
            {k: v for k, v in state.items() if not k.startswith("fc.")}, strict=False)
        if missing or unexpected:
            raise checkpoints.CheckpointError(f"{m['pretrained_path']} is not a torchvision ResNet-{args['depth']}")
    model.set_backbone_bn_momentum(m["backbone_bn_momentum"])
    return model, args


def make_transform(cfg):
    data = cfg["data"]
    return ImageNetTrainTransform(data["scale_range"], data["crop_size"], data["ignore_label"])


def run(args):
    return train_on_labels(
        args, name="DeepLab-V3+", make_transform=make_transform, build_model=build_model,
        make_trainer=deeplab_v3plus_trainer, make_schedule=deeplab_v3plus_schedule,
        batch_text=lambda train: f"batch {train['batch_size']}", make_input=lambda cfg: imagenet_input)


def main(argv=None):
    parser = cli.training_parser(__doc__, REPO / "DeepLabV3Plus-Pytorch" / "configs" / "voc.yaml", labels=True)
    return cli.main(run, parser, argv)


if __name__ == "__main__":
    main()
