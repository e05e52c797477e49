"""Stage 1: train the VGG-16 + DRS multi-label classifier (reference §2).

    python train_cls.py --config configs/cls_voc.yaml --voc-root /data/VOC2012
    torchrun --nproc_per_node 2 train_cls.py --config configs/cls_voc.yaml --voc-root /data/VOC2012
    python train_cls.py --config configs/cls_demo.yaml --voc-root outputs/demo/VOC2012 --set model.drs=relu

Writes ``<out>/last.pth`` after every epoch (``--resume auto`` continues from it), ``best.pth`` when
``val.select_best`` is on, ``config.yaml`` and ``log.jsonl``.
"""

from pathlib import Path

import torch.nn.functional as F

from models.classifier import DRSClassifier
from models.vgg import fold_batch_norm
from utils import checkpoints, voc
from utils.distributed import Runtime
from utils.evaluation import validate_classifier
from utils.training import (
    build_optimizer,
    make_eval_loader,
    make_train_loader,
    run_fit,
    seed_everything,
    training_main,
)
from utils.transforms import classifier_train_transform, eval_transform


def model_args(cfg):
    m = cfg["model"]
    drs = None if m["drs"] in ("relu", None) else m["drs"]
    return {"num_classes": voc.NUM_CLASSES, "drs": drs, "width": float(m["width"]),
            "pretrained": bool(m["pretrained"]), "pretrained_path": m.get("pretrained_path"),
            "batch_norm": bool(m.get("batch_norm", False))}


def warm_start(model, path, with_head=True):
    """Non-strict load of one of our classifier checkpoints: the backbone convs, and the head unless
    ``with_head`` is off (then it keeps its init, as on top of ImageNet weights). DRS gates absent there keep
    their init. A batch-norm backbone (the demo's stand-in) is folded into a plain one."""
    state = checkpoints.load_file(path)
    if not checkpoints.is_ours(state) or state["kind"] != "classifier":
        raise checkpoints.CheckpointError(f"model.init_from {path} must be a classifier checkpoint of this project")
    weights = state["model"] if model.backbone.batch_norm else fold_batch_norm(state["model"])
    wanted = lambda key: with_head or key.startswith("backbone.")
    missing, unexpected = model.load_state_dict({k: v for k, v in weights.items() if wanted(k)}, strict=False)
    missing = [k for k in missing if wanted(k)]
    if unexpected or any(not k.endswith("fc.0.weight") for k in missing):
        raise checkpoints.CheckpointError(f"{path} does not fit this classifier (missing {missing[:3]})")


def make_optimizer(model, tcfg):
    """The optimizer over the classifier's lr groups (``train.lr_multipliers``)."""
    return build_optimizer(model.parameter_groups(tcfg["lr"], tcfg["lr_multipliers"]), tcfg)


def classification_loss(net, images, classes):
    """Multi-label soft-margin loss of the class scores against the image-level labels (0/1 per class)."""
    return F.multilabel_soft_margin_loss(net(images), classes)


def train(cfg, args):
    runtime = Runtime(args.device)
    seed_everything(cfg["train"]["seed"], runtime.rank)
    data, tcfg = cfg["data"], cfg["train"]
    root = Path(data["voc_root"])
    train_set = voc.VOCDataset(root, voc.list_entries(root, data["train_list"]),
                               classifier_train_transform(data["input_size"], data["crop_size"], data["jitter"]))
    train_loader = make_train_loader(train_set, cfg, runtime)

    margs = model_args(cfg)
    model = DRSClassifier(**margs)
    if cfg["model"].get("init_from"):
        warm_start(model, cfg["model"]["init_from"], with_head=cfg["model"].get("init_head", True))
    model.to(runtime.device)
    optimizer = make_optimizer(model, tcfg)

    validate = None
    if cfg["val"]["every"] and runtime.is_main:
        val_set = voc.VOCDataset(root, voc.list_entries(root, data["val_list"]), eval_transform(data["test_size"]),
                                 masks=("label", "saliency"))
        val_loader = make_eval_loader(val_set, cfg)

        def validate(m):
            return validate_classifier(m, val_loader, runtime.device, cfg["val"]["alpha"])

    def loss_fn(net, batch):
        return classification_loss(net, batch["image"].to(runtime.device, non_blocking=True),
                                   batch["classes"].to(runtime.device, non_blocking=True))

    banner = (f"stage 1: {margs['drs'] or 'relu'} classifier, width {margs['width']}, {len(train_set)} train images, "
              f"{tcfg['epochs']} epochs, global batch {tcfg['batch_size']} on {runtime.world_size} process(es), "
              f"{runtime.device}")
    return run_fit(banner, runtime, cfg=cfg, model=model, model_args=margs, kind="classifier", optimizer=optimizer,
                   train_loader=train_loader, loss_fn=loss_fn, validate_fn=validate, resume_arg=args.resume,
                   show_progress=not args.no_progress)


def main(argv=None):
    return training_main(train, argv, "configs/cls_voc.yaml", __doc__)


if __name__ == "__main__":
    main()
