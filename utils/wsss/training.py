"""What the two epoch-based trainers (stage 1 and stage 2) share on top of :mod:`utils.engine`: their optimizers,
the epoch-wise lr schedule, the config and the run."""

import math
from pathlib import Path

import torch

from utils import config as config_module
from utils import engine
from utils.distributed import Runtime, shard
from utils.voc import VOCDataset, collate, list_entries
from utils.wsss.transforms import eval_transform


def build_optimizer(groups, cfg):
    """SGD (optionally Nesterov) or Adam over ``groups``; each group's ``lr`` is remembered as ``base_lr``."""
    for group in groups:
        group["base_lr"] = group["lr"]
    name = cfg["optimizer"]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], nesterov=cfg["nesterov"],
                               weight_decay=cfg["weight_decay"])
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    raise config_module.ConfigError(f"unknown train.optimizer {name!r} (sgd or adam)")


def epoch_trainer(kind, cfg, model, model_args, groups, loss, validate=None):
    """The :class:`utils.engine.Trainer` of stage 1 or 2: ``train.optimizer`` over ``groups``."""
    optimizer = build_optimizer(groups, cfg["train"])
    return engine.Trainer(kind=kind, model=model, model_args=model_args, optimizer=optimizer, loss=loss,
                          validate=validate)


def epoch_lr_factor(epoch, cfg):
    """The lr multiplier for a 1-based ``epoch``: ``step`` (x0.1 from each of ``decay_epochs`` on, as the
    original's stage-1 and stage-2 schedules) or ``cosine`` (half a cosine over ``epochs``, constant within
    an epoch)."""
    schedule = cfg["schedule"]
    if schedule == "step":
        return 0.1 ** sum(epoch >= point for point in cfg["decay_epochs"])
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / cfg["epochs"]))
    raise config_module.ConfigError(f"unknown train.schedule {schedule!r} (step or cosine)")


def set_lr(optimizer, factor):
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def epoch_schedule(cfg, batches_per_epoch):
    """``train.epochs`` epochs of one update per batch, saving at every epoch's end, validating every
    ``val.every`` epochs; the lr is ``epoch_lr_factor`` of the epoch the update falls in."""
    tcfg, vcfg = cfg["train"], cfg["val"]
    length = batches_per_epoch
    return engine.Schedule(
        updates=tcfg["epochs"] * length, lr_at=lambda base, done: base * epoch_lr_factor(done // length + 1, tcfg),
        save_every=length, epoch_length=length, val_every=vcfg["every"] * length, select_best=vcfg["select_best"],
        log_every=cfg["output"]["log_every"])


def start(args):
    """An epoch-based trainer's config, its (seeded) process runtime and its VOC root; seeding comes first,
    before any model is built, so a fixed seed gives the same initial weights."""
    cfg = config_module.load_run(args)
    runtime = Runtime(args.device)
    engine.seed_everything(cfg["train"]["seed"], runtime.rank)
    return cfg, runtime, Path(cfg["data"]["voc_root"])


def validation(cfg, runtime, score, size, maps_dir=None):
    """The per-epoch validation, or None when ``val.every`` is 0: ``score(model, loader, device, alpha,
    runtime)`` over this process's share of ``data.val_list`` (images squashed to ``size``, with their GT, their
    saliency and, for stage 2, their stored maps), in order (the scores are reduced over the processes by
    ``score``)."""
    if not cfg["val"]["every"]:
        return None
    root = cfg["data"]["voc_root"]
    dataset = VOCDataset(root, list_entries(root, cfg["data"]["val_list"]), eval_transform(size),
                         masks=("label", "saliency"), maps_dir=maps_dir)
    indices = shard(range(len(dataset)), runtime)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, indices),
                                         batch_size=cfg["train"]["batch_size"], num_workers=cfg["data"]["num_workers"],
                                         collate_fn=collate)
    return lambda model: score(model, loader, runtime.device, cfg["val"]["alpha"], runtime)


def train_epochs(trainer, train_set, cfg, args, runtime, what):
    """Run an epoch-based trainer (its model still on the CPU: the optimizer keeps the same parameters when it
    moves): its loader, its schedule, then :func:`engine.run`; ``what`` opens the banner."""
    trainer.model.to(runtime.device)
    tcfg = cfg["train"]
    banner = (f"{what}, {len(train_set)} train images, {tcfg['epochs']} epochs, global batch {tcfg['batch_size']} "
              f"on {runtime.world_size} process(es), {runtime.device}")
    loader = engine.make_train_loader(train_set, batch_size=tcfg["batch_size"], workers=cfg["data"]["num_workers"],
                                      seed=tcfg["seed"], runtime=runtime, drop_last=False, collate_fn=collate)
    out_dir = Path(cfg["output"]["dir"])
    return engine.run(trainer, epoch_schedule(cfg, len(loader)), loader, runtime, out_dir, config=cfg,
                      resume=engine.resume_path(args.resume, out_dir), show_progress=not args.no_progress,
                      banner=banner)
