"""Stage 1: train the VGG-16 + DRS multi-label classifier (original §2).

    python train_cls.py --config configs/cls_voc.yaml --voc-root /data/VOC2012
    torchrun --nproc_per_node 2 train_cls.py --config configs/cls_voc.yaml --voc-root /data/VOC2012
    python train_cls.py --config configs/cls_demo.yaml --voc-root outputs/demo/VOC2012 --set model.drs=relu

Writes ``<out>/last.pth`` after every epoch (``--resume auto`` continues from it), ``best.pth`` when
``val.select_best`` is on, ``config.yaml`` and ``log.jsonl``.
"""


import torch.nn.functional as F

import models
from models.vgg import fold_batch_norm
from utils import checkpoints, cli, voc
from utils.wsss.evaluation import validate_classifier
from utils.wsss.training import epoch_trainer, start, train_epochs, validation
from utils.wsss.transforms import classifier_train_transform


def model_args(cfg):
    m = cfg["model"]
    drs = None if m["drs"] in ("relu", None) else m["drs"]
    return {"num_classes": voc.NUM_CLASSES, "drs": drs, "width": float(m["width"]),
            "pretrained": bool(m["pretrained"]), "pretrained_path": m["pretrained_path"],
            "batch_norm": bool(m["batch_norm"])}


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


def classification_loss(net, images, classes):
    """Multi-label soft-margin loss of the class scores against the image-level labels (0/1 per class)."""
    return F.multilabel_soft_margin_loss(net(images), classes)


def make_trainer(cfg, model, margs, validate=None):
    """Stage 1 for :mod:`utils.engine`: the classifier's lr groups (``train.lr_multipliers``) and the loss on a
    batch's images and labels."""
    groups = model.parameter_groups(cfg["train"]["lr"], cfg["train"]["lr_multipliers"])
    loss = lambda net, batch: classification_loss(net, batch["image"], batch["classes"])
    return epoch_trainer("classifier", cfg, model, margs, groups, loss, validate)


def train(args):
    cfg, runtime, root = start(args)
    data = cfg["data"]
    train_set = voc.VOCDataset(root, voc.list_entries(root, data["train_list"]),
                               classifier_train_transform(data["input_size"], data["crop_size"], data["jitter"]))
    margs = model_args(cfg)
    model = models.build("classifier", **margs)
    if cfg["model"]["init_from"]:
        warm_start(model, cfg["model"]["init_from"], with_head=cfg["model"]["init_head"])
    validate = validation(cfg, runtime, validate_classifier, data["test_size"])
    return train_epochs(make_trainer(cfg, model, margs, validate), train_set, cfg, args, runtime,
                        f"stage 1: {margs['drs'] or 'relu'} classifier, width {margs['width']}")


def main(argv=None):
    return cli.main(train, cli.training_parser(__doc__, "configs/cls_voc.yaml"), argv)


if __name__ == "__main__":
    main()
