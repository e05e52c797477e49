"""Stage 2: train the refinement network to regress the stage-1 localization maps (reference §4).

    python train_refine.py --config configs/refine_voc.yaml --voc-root /data/VOC2012
    torchrun --nproc_per_node 2 train_refine.py --config configs/refine_voc.yaml --voc-root /data/VOC2012

Reads ``<voc_root>/localization_maps/<id>.npy`` (or ``data.maps_dir``). Writes ``last.pth`` every epoch
(``--resume auto``), ``best.pth`` when ``val.select_best``, ``config.yaml`` and ``log.jsonl``.
"""

from pathlib import Path

import torch.nn.functional as F

from models.refine import RefineNet
from models.vgg import fold_batch_norm
from utils import checkpoints, voc
from utils.distributed import Runtime
from utils.evaluation import validate_refiner
from utils.pseudo_labels import top_class_target
from utils.training import (
    build_optimizer,
    make_eval_loader,
    make_train_loader,
    run_fit,
    seed_everything,
    training_main,
)
from utils.transforms import refine_train_transform


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


def make_optimizer(model, tcfg):
    """One group: every parameter at ``train.lr`` (the original uses Adam over the whole network)."""
    return build_optimizer([{"params": list(model.parameters()), "lr": tcfg["lr"]}], tcfg)


def refinement_loss(net, images, maps):
    """Mean squared error between the refined maps and the stage-1 ``maps`` (floats in [0, 1]) reduced to each
    pixel's top class."""
    return F.mse_loss(net(images), top_class_target(maps))


def train(cfg, args):
    runtime = Runtime(args.device)
    seed_everything(cfg["train"]["seed"], runtime.rank)
    data, tcfg = cfg["data"], cfg["train"]
    root = Path(data["voc_root"])
    maps_dir = Path(data["maps_dir"] or root / "localization_maps")
    train_set = voc.VOCDataset(root, voc.list_entries(root, data["train_list"]),
                               refine_train_transform(data["size"], data["jitter"]), maps_dir=maps_dir)
    train_loader = make_train_loader(train_set, cfg, runtime)

    margs = {"num_classes": voc.NUM_CLASSES, "width": float(cfg["model"]["width"]),
             "pretrained": bool(cfg["model"]["pretrained"]), "pretrained_path": cfg["model"].get("pretrained_path")}
    model = RefineNet(**margs)
    if cfg["model"].get("init_from"):
        backbone_warm_start(model, cfg["model"]["init_from"])
    model.to(runtime.device)
    optimizer = make_optimizer(model, tcfg)

    validate = None
    if cfg["val"]["every"] and runtime.is_main:
        from utils.transforms import eval_transform

        val_set = voc.VOCDataset(root, voc.list_entries(root, data["val_list"]), eval_transform(data["size"]),
                                 masks=("label", "saliency"), maps_dir=maps_dir)
        val_loader = make_eval_loader(val_set, cfg)

        def validate(m):
            return validate_refiner(m, val_loader, runtime.device, cfg["val"]["alpha"])

    def loss_fn(net, batch):
        return refinement_loss(net, batch["image"].to(runtime.device, non_blocking=True),
                               batch["maps"].to(runtime.device, non_blocking=True))

    banner = (f"stage 2: refinement network, width {margs['width']}, {len(train_set)} train images with maps from "
              f"{maps_dir}, {tcfg['epochs']} epochs, global batch {tcfg['batch_size']} on {runtime.world_size} "
              f"process(es), {runtime.device}")
    return run_fit(banner, runtime, cfg=cfg, model=model, model_args=margs, kind="refine", optimizer=optimizer,
                   train_loader=train_loader, loss_fn=loss_fn, validate_fn=validate, resume_arg=args.resume,
                   show_progress=not args.no_progress)


def main(argv=None):
    return training_main(train, argv, "configs/refine_voc.yaml", __doc__)


if __name__ == "__main__":
    main()
