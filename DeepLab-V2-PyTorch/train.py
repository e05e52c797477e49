"""Train DeepLab-V2 (ResNet-101, MSC) on the DRS pseudo labels. Entry point only: the code is in models/ and utils/.

    python DeepLab-V2-PyTorch/train.py --config DeepLab-V2-PyTorch/configs/voc12_2gpu.yaml --voc-root /data/VOC2012
    torchrun --nproc_per_node 2 DeepLab-V2-PyTorch/train.py --config ... --voc-root /data/VOC2012

Writes ``<out>/checkpoint_final.pth`` (what eval.py reads), ``checkpoint_<it>.pth`` and ``last.pth`` every
train.save_every updates (``--resume auto`` continues from ``last.pth``), ``config.yaml``, ``log.jsonl``.
"""

import sys
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from utils import checkpoints, cli  # noqa: E402
from utils.seg.data import CaffeTrainTransform  # noqa: E402
from utils.seg.evaluation import caffe_input  # noqa: E402
from utils.seg.training import deeplab_v2_schedule, deeplab_v2_trainer, train_on_labels  # noqa: E402


def build_model(cfg):
    m = cfg["model"]
    args = {"n_classes": m["num_classes"], "n_blocks": list(m["n_blocks"]), "atrous_rates": list(m["atrous_rates"]),
            "width": float(m["width"]), "scales": list(m["msc_scales"])}
    model = models.build("deeplab_v2", **args)
    init = m["init_from"]
    if init:
        path = Path(init) if Path(init).is_absolute() else REPO / init
        if not path.is_file():
            raise checkpoints.CheckpointError(
                f"COCO init {path} not found: `python -m utils.assets fetch coco-init` puts it there (or "
                "download deeplabv1_resnet101-coco.pth by hand), or set model.init_from")
        checkpoints.load_coco_init(model.base, path)
    return model, args


def make_transform(cfg):
    data = cfg["data"]
    return CaffeTrainTransform(data["scales"], data["crop_size"], data["mean_bgr"], data["ignore_label"])


def run(args):
    return train_on_labels(
        args, name="DeepLab-V2", make_transform=make_transform, build_model=build_model,
        make_trainer=deeplab_v2_trainer, make_schedule=deeplab_v2_schedule,
        batch_text=lambda train: f"{train['batch_size']} x {train['accumulation']} images",
        make_input=lambda cfg: partial(caffe_input, mean_bgr=cfg["data"]["mean_bgr"]))


def main(argv=None):
    parser = cli.training_parser(__doc__, REPO / "DeepLab-V2-PyTorch" / "configs" / "voc12.yaml", labels=True)
    return cli.main(run, parser, argv)


if __name__ == "__main__":
    main()
