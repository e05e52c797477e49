"""The segmentation networks' trainers for :mod:`utils.engine`, on pseudo labels. DeepLab-V2 (the original's
kazuto1011-based recipe): frozen BN, three lr groups, a poly lr that changes every ``train.lr_step`` updates,
the DRS self-training loss term. DeepLab-V3+ (VainF's recipe): two lr groups, poly with a floor, cross-entropy,
AMP on CUDA, synchronised BN under torchrun."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from utils import checkpoints, engine, voc
from utils import config as config_module
from utils.distributed import Runtime
from utils.seg.data import SegmentationTrainSet
from utils.seg.evaluation import validation_miou

KIND = "deeplab_v2"


def poly_lr(base, iteration, max_iterations, step=10, power=0.9):
    """The lr in force after ``iteration`` updates: poly decay, recomputed only every ``step`` iterations."""
    iteration = min(iteration // step * step, max_iterations)
    return base * (1 - iteration / max_iterations) ** power


def parameter_groups(model, lr, weight_decay):
    """Backbone conv weights x1, ASPP weights x10, ASPP biases x20 (no decay); BN parameters are frozen."""
    base = checkpoints.unwrap(model).base
    backbone, aspp_w, aspp_b = [], [], []
    for name, module in base.named_modules():
        if isinstance(module, nn.Conv2d):
            if name.startswith("aspp"):
                aspp_w.append(module.weight)
                aspp_b.append(module.bias)
            else:
                backbone.append(module.weight)
    return [{"params": backbone, "lr": lr, "base_lr": lr, "weight_decay": weight_decay},
            {"params": aspp_w, "lr": 10 * lr, "base_lr": 10 * lr, "weight_decay": weight_decay},
            {"params": aspp_b, "lr": 20 * lr, "base_lr": 20 * lr, "weight_decay": 0.0}]


def freeze_batchnorm(model):
    """BN layers use their stored statistics and affine parameters, never updated (the batch is too small)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()
            for param in module.parameters():
                param.requires_grad_(False)


def resize_labels(labels, size):
    """Nearest-neighbour resize of (B, H, W) label maps to a logit size (the original uses PIL NEAREST)."""
    # "nearest-exact" samples pixel centres, as PIL NEAREST does; plain "nearest" picks other pixels
    return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest-exact")[:, 0].long()


def segmentation_loss(outputs, labels, image_labels, self_training=True, ignore=voc.IGNORE_LABEL):
    """Sum over the MSC outputs of CE(logits, labels); with ``self_training``, plus CE against the argmax of
    the detached logits restricted to the image's classes (DRS's addition to the kazuto recipe)."""
    total = 0.0
    for logits in outputs:
        target = resize_labels(labels, logits.shape[-2:])
        total = total + F.cross_entropy(logits, target, ignore_index=ignore)
        if self_training:
            pseudo = (logits.detach() * image_labels[:, :, None, None]).argmax(dim=1)
            total = total + F.cross_entropy(logits, pseudo, ignore_index=ignore)
    return total


def _sgd(groups, momentum):
    """SGD with momentum over ``groups`` (each with its lr, ``base_lr`` and weight decay)."""
    return torch.optim.SGD(groups, lr=groups[0]["lr"], momentum=momentum)


def _train_mode(freeze_bn):
    def train_mode(net):
        """Training mode for one update; with frozen BN every BatchNorm stays in eval mode, untrained."""
        net.train()
        if freeze_bn:
            freeze_batchnorm(checkpoints.unwrap(net))
    return train_mode


def deeplab_v2_trainer(cfg, model, model_args):
    """DeepLab-V2 for :mod:`utils.engine`: three SGD groups, frozen BN (``train.freeze_bn``), the loss over
    the MSC outputs with the optional self-training term."""
    train, ignore = cfg["train"], cfg["data"]["ignore_label"]
    if train["freeze_bn"]:
        freeze_batchnorm(model)  # before DDP, which must not wait for gradients of frozen parameters
    return engine.Trainer(
        kind=KIND, model=model, model_args=model_args,
        optimizer=_sgd(parameter_groups(model, train["lr"], train["weight_decay"]), train["momentum"]),
        loss=lambda net, batch: segmentation_loss(net(batch["image"]), batch["label"], batch["classes"],
                                                  train["self_training"], ignore),
        train_mode=_train_mode(train["freeze_bn"]))


def deeplab_v2_schedule(cfg):
    """``train.iterations`` updates of ``train.accumulation`` batches, the poly lr updated every
    ``train.lr_step`` updates."""
    train = cfg["train"]
    return engine.Schedule(
        updates=train["iterations"],
        lr_at=lambda base, done: poly_lr(base, done, train["iterations"], train["lr_step"], train["poly_power"]),
        save_every=train["save_every"], keep_checkpoints=True, accumulate=train["accumulation"],
        log_every=cfg["output"]["log_every"], val_every=cfg["val"]["every"])


def poly_lr_min(base, iteration, max_iterations, power=0.9, min_lr=1e-6):
    """DeepLab-V3+'s poly lr, updated every iteration, floored at ``min_lr``."""
    return max(base * (1 - min(iteration, max_iterations) / max_iterations) ** power, min_lr)


def deeplab_v3plus_groups(model, lr, backbone_mult, weight_decay):
    """Backbone at ``backbone_mult`` x lr, the head at lr; weight decay on everything (as the original)."""
    model = checkpoints.unwrap(model)
    return [{"params": list(model.backbone.parameters()), "lr": backbone_mult * lr, "base_lr": backbone_mult * lr,
             "weight_decay": weight_decay},
            {"params": list(model.classifier.parameters()), "lr": lr, "base_lr": lr, "weight_decay": weight_decay}]


def deeplab_v3plus_trainer(cfg, model, model_args):
    """DeepLab-V3+ for :mod:`utils.engine`: two SGD groups, cross-entropy, synchronised BN under torchrun."""
    train, ignore = cfg["train"], cfg["data"]["ignore_label"]
    groups = deeplab_v3plus_groups(model, train["lr"], train["backbone_lr_mult"], train["weight_decay"])
    return engine.Trainer(
        kind="deeplab_v3plus", model=model, model_args=model_args, optimizer=_sgd(groups, train["momentum"]),
        loss=lambda net, batch: F.cross_entropy(net(batch["image"]), batch["label"], ignore_index=ignore),
        sync_bn=train["sync_bn"])


def deeplab_v3plus_schedule(cfg):
    """``train.iterations`` updates, the poly lr with a floor updated every update, AMP on CUDA."""
    train = cfg["train"]
    return engine.Schedule(
        updates=train["iterations"],
        lr_at=lambda base, done: poly_lr_min(base, done, train["iterations"], train["poly_power"], train["min_lr"]),
        save_every=train["save_every"], keep_checkpoints=True, amp=train["amp"], log_every=cfg["output"]["log_every"],
        val_every=cfg["val"]["every"])


# --- what the two segmentation entry points share -------------------------------------------------------------

def validation(cfg, load_input, runtime):
    """The optional in-training validation (``val.every`` > 0): the mIoU on ``data.val_list`` against
    ``data.val_labels``, each process scoring its share of the images; ``load_input`` is the network's
    input function of :mod:`utils.seg.evaluation`."""
    data = cfg["data"]
    if not cfg["val"]["every"]:
        return None
    ids = [i for i, _ in voc.list_entries(data["voc_root"], data["val_list"])]
    gt_dir = Path(data["voc_root"]) / data["val_labels"]
    return lambda model: {"miou": validation_miou(model, data["voc_root"], ids, gt_dir, load_input, runtime)}


def train_on_labels(args, *, name, make_transform, build_model, make_trainer, make_schedule, batch_text, make_input):
    """The body of both segmentation trainers: the config, seeding, the pseudo-label dataset and loader, the
    model, then :func:`utils.engine.run`. ``make_transform(cfg)`` builds the training augmentation and
    ``make_input(cfg)`` the function reading a validation image as the network expects it."""
    cfg = config_module.load_run(args)
    data, train = cfg["data"], cfg["train"]
    runtime = Runtime(args.device)
    engine.seed_everything(train["seed"], runtime.rank)
    dataset = SegmentationTrainSet(data["voc_root"], voc.list_entries(data["voc_root"], data["train_list"]),
                                   data["labels"], make_transform(cfg))
    loader = engine.make_train_loader(dataset, batch_size=train["batch_size"], workers=data["num_workers"],
                                      seed=train["seed"], runtime=runtime, drop_last=True)
    model, model_args = build_model(cfg)
    trainer = make_trainer(cfg, model.to(runtime.device), model_args)
    trainer.validate = validation(cfg, make_input(cfg), runtime)
    synced = trainer.sync_bn and runtime.distributed
    banner = (f"{name}: {len(dataset)} images with labels from {dataset.label_dir}, {train['iterations']} updates "
              f"of {batch_text(train)} on {runtime.world_size} process(es), {runtime.device}"
              f"{', synchronised BN' if synced else ''}")
    out_dir = Path(cfg["output"]["dir"])
    return engine.run(trainer, make_schedule(cfg), loader, runtime, out_dir, config=cfg,
                      resume=engine.resume_path(args.resume, out_dir), show_progress=not args.no_progress,
                      banner=banner)
