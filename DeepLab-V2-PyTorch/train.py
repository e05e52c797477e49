"""Train DeepLab-V2 (ResNet-101, MSC) on the DRS pseudo labels. Entry point only: the code is in models/ and utils/.

    python DeepLab-V2-PyTorch/train.py --config DeepLab-V2-PyTorch/configs/voc12_2gpu.yaml --voc-root /data/VOC2012
    torchrun --nproc_per_node 2 DeepLab-V2-PyTorch/train.py --config ... --voc-root /data/VOC2012

Writes ``<out>/checkpoint_final.pth`` (what eval.py reads), ``checkpoint_<it>.pth`` and ``last.pth`` every
SOLVER.ITER_SAVE iterations (``--resume auto`` continues from ``last.pth``), ``config.yaml``, ``log.jsonl``.
"""

import sys
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import models  # noqa: E402
from utils import checkpoints, cli  # noqa: E402
from utils.seg.data import CaffeTrainTransform, bgr_mean  # noqa: E402
from utils.seg.evaluation import caffe_input  # noqa: E402
from utils.seg.training import deeplab_v2_schedule, deeplab_v2_trainer, load_config, train_on_labels  # noqa: E402


def build_model(cfg):
    m = cfg["MODEL"]
    args = {"n_classes": cfg["DATASET"]["N_CLASSES"], "n_blocks": list(m["N_BLOCKS"]),
            "atrous_rates": list(m["ATROUS_RATES"]), "width": float(m["WIDTH"]), "scales": list(m["MSC_SCALES"])}
    model = models.build("deeplab_v2", **args)
    init = m["INIT_MODEL"]
    if init:
        path = Path(init) if Path(init).is_absolute() else REPO / init
        if not path.is_file():
            raise checkpoints.CheckpointError(
                f"COCO init {path} not found: download deeplabv1_resnet101-coco.pth there (see "
                "DeepLab-V2-PyTorch/README.md) or set MODEL.INIT_MODEL")
        checkpoints.load_coco_init(model.base, path)
    return model, args


def run(args):
    cfg = load_config(args)
    data, solver = cfg["DATASET"], cfg["SOLVER"]
    mean = bgr_mean(cfg["IMAGE"]["MEAN"])
    return train_on_labels(
        cfg, args, name="DeepLab-V2", out_dir=Path(args.out or REPO / "outputs" / "deeplab_v2" / cfg["EXP"]["ID"]),
        transform=CaffeTrainTransform(data["SCALES"], cfg["IMAGE"]["SIZE"]["TRAIN"], mean,
                                      data["IGNORE_LABEL"]),
        batch=solver["BATCH_SIZE"]["TRAIN"], workers=cfg["DATALOADER"]["NUM_WORKERS"], build_model=build_model,
        make_trainer=deeplab_v2_trainer, make_schedule=deeplab_v2_schedule,
        batch_text=f"{solver['BATCH_SIZE']['TRAIN']} x {solver['ITER_SIZE']} images",
        load_input=partial(caffe_input, mean_bgr=mean))


def main(argv=None):
    parser = cli.training_parser(__doc__, REPO / "DeepLab-V2-PyTorch" / "configs" / "voc12.yaml", labels=True)
    return cli.main(run, parser, argv)


if __name__ == "__main__":
    main()
