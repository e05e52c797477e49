"""Stage 2: train the refinement network to regress the stage-1 localization maps (original §4).

    python train_refine.py --config configs/refine_voc.yaml --voc-root /data/VOC2012
    torchrun --nproc_per_node 2 train_refine.py --config configs/refine_voc.yaml --voc-root /data/VOC2012

Reads ``<voc_root>/localization_maps/<id>.npy`` (or ``data.maps_dir``). Writes ``last.pth`` every epoch
(``--resume auto``), ``best.pth`` when ``val.select_best``, ``config.yaml`` and ``log.jsonl``.
"""

from pathlib import Path

import torch.nn.functional as F

import models
from models.vgg import fold_batch_norm
from utils import checkpoints, cli, voc
from utils.wsss.evaluation import validate_refiner
from utils.wsss.pseudo_labels import top_class_target
from utils.wsss.training import epoch_trainer, start, train_epochs, validation
from utils.wsss.transforms import refine_train_transform


def backbone_warm_start(model, path):
    """Copy the VGG backbone convs of one of our stage-1 checkpoints (the demo's ImageNet stand-in)."""
    state = checkpoints.load_file(path)
    if not checkpoints.is_ours(state):
        raise checkpoints.CheckpointError(f"model.init_from {path} must be a checkpoint of this project")
    weights = fold_batch_norm(state["model"])  # the demo's stand-in may have been pre-trained with BN
    convs = {k: v for k, v in weights.items() if k.startswith("backbone.") and ".fc." not in k}
    try:
        model.load_state_dict(convs, strict=False)
    except RuntimeError as error:
        raise checkpoints.CheckpointError(f"{path}: backbone does not fit: {str(error).splitlines()[0]}") from None


def refinement_loss(net, images, maps):
    """Mean squared error between the refined maps and the stage-1 ``maps`` (floats in [0, 1]) reduced to each
    pixel's top class."""
    return F.mse_loss(net(images), top_class_target(maps))


def make_trainer(cfg, model, margs, validate=None):
    """Stage 2 for :mod:`utils.engine`: every parameter in one group at ``train.lr`` (the original uses Adam over
    the whole network), the loss against a batch's stage-1 maps."""
    loss = lambda net, batch: refinement_loss(net, batch["image"], batch["maps"])
    return epoch_trainer("refine", cfg, model, margs, [{"params": list(model.parameters()), "lr": cfg["train"]["lr"]}],
                         loss, validate)


def train(args):
    cfg, runtime, root = start(args)
    data = cfg["data"]
    maps_dir = Path(data["maps_dir"] or root / "localization_maps")
    train_set = voc.VOCDataset(root, voc.list_entries(root, data["train_list"]),
                               refine_train_transform(data["size"], data["jitter"]), maps_dir=maps_dir)
    m = cfg["model"]
    margs = {"num_classes": voc.NUM_CLASSES, "width": float(m["width"]), "pretrained": bool(m["pretrained"]),
             "pretrained_path": m["pretrained_path"]}
    model = models.build("refine", **margs)
    if m["init_from"]:
        backbone_warm_start(model, m["init_from"])
    validate = validation(cfg, runtime, validate_refiner, data["size"], maps_dir=maps_dir)
    return train_epochs(make_trainer(cfg, model, margs, validate), train_set, cfg, args, runtime,
                        f"stage 2: refinement network, width {margs['width']}, maps from {maps_dir}")


def main(argv=None):
    return cli.main(train, cli.training_parser(__doc__, "configs/refine_voc.yaml"), argv)


if __name__ == "__main__":
    main()
