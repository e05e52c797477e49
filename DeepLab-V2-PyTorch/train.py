"""Train DeepLab-V2 (ResNet-101, MSC) on the DRS pseudo labels. Entry point only: the code is in models/ and utils/.

    python DeepLab-V2-PyTorch/train.py --config DeepLab-V2-PyTorch/configs/voc12_2gpu.yaml --voc-root /data/VOC2012
    torchrun --nproc_per_node 2 DeepLab-V2-PyTorch/train.py --config ... --voc-root /data/VOC2012

Writes ``<out>/checkpoint_final.pth`` (what eval.py reads), ``checkpoint_<it>.pth`` and ``last.pth`` every
SOLVER.ITER_SAVE iterations (``--resume auto`` continues from ``last.pth``), ``config.yaml``, ``log.jsonl``.
"""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.deeplab_v2 import deeplab_v2_msc  # noqa: E402
from utils import checkpoints, voc  # noqa: E402
from utils.seg_data import CaffeTrainTransform, bgr_mean  # noqa: E402
from utils.seg_eval import validation_miou  # noqa: E402
from utils.seg_training import deeplab_v2_recipe, entry_main, train_on_labels  # noqa: E402


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


def run(cfg, args):
    data, solver = cfg["DATASET"], cfg["SOLVER"]
    return train_on_labels(
        cfg, args, name="DeepLab-V2", out_dir=Path(args.out_dir or REPO / "outputs" / "deeplab_v2" / cfg["EXP"]["ID"]),
        transform=CaffeTrainTransform(data["SCALES"], cfg["IMAGE"]["SIZE"]["TRAIN"], bgr_mean(cfg["IMAGE"]["MEAN"]),
                                      data["IGNORE_LABEL"]),
        batch=solver["BATCH_SIZE"]["TRAIN"], workers=cfg["DATALOADER"]["NUM_WORKERS"], build_model=build_model,
        recipe=deeplab_v2_recipe, batch_text=f"{solver['BATCH_SIZE']['TRAIN']} x {solver['ITER_SIZE']} images",
        validate_fn=validation(cfg))


def main(argv=None):
    return entry_main(run, argv, __doc__, REPO / "DeepLab-V2-PyTorch" / "configs" / "voc12.yaml")


if __name__ == "__main__":
    main()
