"""Training of the segmentation networks on pseudo labels: one iteration loop (resume, DDP, AMP, gradient
accumulation, periodic checkpoints) driven by a :class:`Recipe`. DeepLab-V2's (reference §7.5): frozen BN,
three lr groups, a poly lr that changes every ``LR_DECAY`` iterations, the DRS self-training loss term.
DeepLab-V3+'s (§8.2): two lr groups, poly with a floor, cross-entropy, AMP on CUDA."""

import argparse
import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from utils import checkpoints, voc
from utils import config as config_module
from utils.distributed import Runtime
from utils.io import progress
from utils.seg_data import SegmentationTrainSet, make_loader
from utils.sync_bn import convert_sync_batchnorm
from utils.training import RunLog, resume_path, save_run_config, seed_everything

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


def infinite(loader):
    epoch = 0
    while True:
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


@dataclass
class Recipe:
    """What differs between the segmentation networks' training loops."""

    kind: str  # checkpoint kind
    param_groups: list  # optimizer groups, each with its ``base_lr``
    lr_at: Callable  # (base_lr, finished updates) -> lr of the next update
    loss: Callable  # (outputs, batch on device) -> loss
    max_iter: int
    save_every: int
    momentum: float = 0.9
    accumulate: int = 1
    freeze_bn: bool = False
    amp: str | None = None  # "bf16" or "fp16" on CUDA; ignored on the CPU
    log_every: int = 50
    val_every: int = 0
    seed: int = 0


def deeplab_v2_recipe(cfg, model):
    solver = cfg["SOLVER"]
    return Recipe(
        kind=KIND, param_groups=parameter_groups(model, solver["LR"], solver["WEIGHT_DECAY"]),
        lr_at=lambda base, it: poly_lr(base, it, solver["ITER_MAX"], solver["LR_DECAY"], solver["POLY_POWER"]),
        loss=lambda outputs, batch: segmentation_loss(outputs, batch["label"], batch["classes"],
                                                      solver["SELF_TRAINING"]),
        max_iter=solver["ITER_MAX"], save_every=solver["ITER_SAVE"], momentum=solver["MOMENTUM"],
        accumulate=solver["ITER_SIZE"], freeze_bn=solver.get("FREEZE_BN", True), log_every=solver.get("ITER_TB", 50),
        val_every=cfg.get("VAL", {}).get("EVERY", 0), seed=solver["SEED"])


def _autocast(recipe, device):
    if recipe.amp and device.type == "cuda":
        return torch.autocast("cuda", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[recipe.amp])
    return contextlib.nullcontext()


def make_optimizer(recipe):
    """SGD with momentum over the recipe's groups (weight decay is set per group)."""
    return torch.optim.SGD(recipe.param_groups, lr=recipe.param_groups[0]["lr"], momentum=recipe.momentum)


def set_training_mode(net, recipe):
    """Training mode for one update; with ``freeze_bn`` every BatchNorm stays in eval mode, untrained."""
    net.train()
    if recipe.freeze_bn:
        freeze_batchnorm(checkpoints.unwrap(net))


def train(recipe, cfg, model, model_args, loader, runtime, out_dir, resume_from=None, show_progress=True,
          validate_fn=None):
    """Iteration-based training; writes ``last.pth`` and ``checkpoint_<it>.pth`` every ``save_every``
    iterations and ``checkpoint_final.pth`` at the end. ``resume_from`` continues after its iteration.
    ``validate_fn(model) -> mIoU`` runs every ``val_every`` iterations, for the log only: it never selects
    the checkpoint (selecting on val would tune on the test set, reference §12.8)."""
    out_dir = Path(out_dir)
    seed_everything(recipe.seed, runtime.rank)
    optimizer = make_optimizer(recipe)
    use_amp = bool(recipe.amp) and runtime.device.type == "cuda"
    if recipe.amp and not use_amp and runtime.is_main:
        print(f"AMP ({recipe.amp}) is CUDA-only: training in float32 on {runtime.device}")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and recipe.amp == "fp16")
    start = 0
    if resume_from:
        state = checkpoints.load_file(resume_from)
        if not checkpoints.is_ours(state) or state.get("kind") != recipe.kind:
            raise checkpoints.CheckpointError(f"{resume_from} is not a {recipe.kind} checkpoint of this project")
        checkpoints.unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["iteration"]
        if runtime.is_main:
            print(f"resumed from {resume_from} after iteration {start}")
    if recipe.freeze_bn:
        freeze_batchnorm(model)  # before DDP, which must not wait for gradients of frozen parameters
    net = model
    if runtime.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    log = RunLog(out_dir / "log.jsonl", enabled=runtime.is_main)
    batches = infinite(loader)

    def save(name, iteration):
        checkpoints.save(out_dir / name, kind=recipe.kind, model=model, model_args=model_args, optimizer=optimizer,
                         config=cfg, extra={"iteration": iteration})

    quiet = not show_progress or not runtime.is_main
    bar = progress(range(start + 1, recipe.max_iter + 1), quiet=quiet, desc="iterations")
    for iteration in bar:
        for group in optimizer.param_groups:
            group["lr"] = recipe.lr_at(group["base_lr"], iteration - 1)
        set_training_mode(net, recipe)
        optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        for _ in range(recipe.accumulate):
            batch = {k: v.to(runtime.device, non_blocking=True) if torch.is_tensor(v) else v
                     for k, v in next(batches).items()}
            with _autocast(recipe, runtime.device):
                loss = recipe.loss(net(batch["image"]), batch) / recipe.accumulate
            scaler.scale(loss).backward()
            loss_value += loss.item()
        scaler.step(optimizer)
        scaler.update()
        bar.set_postfix(loss=f"{loss_value:.4f}")
        if runtime.is_main and (iteration % recipe.log_every == 0 or iteration == recipe.max_iter):
            log.write(event="train", iteration=iteration, loss=loss_value, lr=optimizer.param_groups[0]["lr"])
        if validate_fn is not None and runtime.is_main and recipe.val_every and iteration % recipe.val_every == 0:
            val_miou = validate_fn(model)
            log.write(event="val", iteration=iteration, miou=val_miou)
            print(f"iteration {iteration}: val mIoU {100 * val_miou:.2f}", flush=True)
        if runtime.is_main and (iteration % recipe.save_every == 0 or iteration == recipe.max_iter):
            save("last.pth", iteration)
            save(f"checkpoint_{iteration}.pth", iteration)
            print(f"iteration {iteration}: loss {loss_value:.4f}, lr {optimizer.param_groups[0]['lr']:.3e}", flush=True)
        runtime.barrier()
    if runtime.is_main:
        save("checkpoint_final.pth", recipe.max_iter)
    return out_dir / "checkpoint_final.pth"


def poly_lr_min(base, iteration, max_iterations, power=0.9, min_lr=1e-6):
    """DeepLab-V3+'s poly lr, updated every iteration, floored at ``min_lr``."""
    return max(base * (1 - min(iteration, max_iterations) / max_iterations) ** power, min_lr)


def deeplab_v3plus_groups(model, lr, backbone_mult, weight_decay):
    """Backbone at ``backbone_mult`` x lr, the head at lr; weight decay on everything (as the original)."""
    model = checkpoints.unwrap(model)
    return [{"params": list(model.backbone.parameters()), "lr": backbone_mult * lr, "base_lr": backbone_mult * lr,
             "weight_decay": weight_decay},
            {"params": list(model.classifier.parameters()), "lr": lr, "base_lr": lr, "weight_decay": weight_decay}]


def deeplab_v3plus_recipe(cfg, model):
    solver = cfg["SOLVER"]
    ignore = cfg["DATASET"]["IGNORE_LABEL"]
    return Recipe(
        kind="deeplab_v3plus",
        param_groups=deeplab_v3plus_groups(model, solver["LR"], solver["BACKBONE_LR_MULT"], solver["WEIGHT_DECAY"]),
        lr_at=lambda base, it: poly_lr_min(base, it, solver["ITER_MAX"], solver["POLY_POWER"], solver["MIN_LR"]),
        loss=lambda logits, batch: F.cross_entropy(logits, batch["label"], ignore_index=ignore),
        max_iter=solver["ITER_MAX"], save_every=solver["ITER_SAVE"], momentum=solver["MOMENTUM"],
        amp=solver.get("AMP"), log_every=solver.get("LOG_EVERY", 50), val_every=cfg.get("VAL", {}).get("EVERY", 0),
        seed=solver["SEED"])


# --- what the two segmentation entry points share -------------------------------------------------------------

def entry_args(argv, description, default_config):
    """The command line of DeepLab-V2-PyTorch/train.py and DeepLabV3Plus-Pytorch/main.py."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(default_config))
    parser.add_argument("--voc-root", default=None, help="overrides DATASET.ROOT (the VOC2012 folder)")
    parser.add_argument("--label-dir", "--labels", dest="label_dir", default=None,
                        help="overrides DATASET.LABELS: the training labels' folder, under the VOC root or absolute")
    parser.add_argument("--out-dir", default=None, help="default: outputs/<network>/<EXP.ID>")
    parser.add_argument("--resume", default=None, help="a checkpoint, or 'auto' for <out>/last.pth if present")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def entry_config(args):
    """The config with the command line's overrides; a VOC root is required."""
    cfg = config_module.load(args.config, args.set)
    data = cfg["DATASET"]
    if args.voc_root:
        data["ROOT"] = args.voc_root
    if args.label_dir:
        data["LABELS"] = args.label_dir
    if not data["ROOT"]:
        raise voc.DataError("no VOC root: pass --voc-root or set DATASET.ROOT")
    return cfg


def train_on_labels(cfg, args, *, name, out_dir, transform, batch, workers, build_model, recipe, batch_text,
                    validate_fn=None, sync_bn=False):
    """The body of both segmentation trainers: the pseudo-label dataset and loader, the model (with synchronised
    BN under torchrun if ``sync_bn``), the config kept in ``out_dir``, then :func:`train`."""
    data, solver = cfg["DATASET"], cfg["SOLVER"]
    runtime = Runtime(args.device)
    dataset = SegmentationTrainSet(data["ROOT"], voc.list_entries(data["ROOT"], data["SPLIT"]["TRAIN"]),
                                   data["LABELS"], transform)
    loader = make_loader(dataset, batch, workers, solver["SEED"], runtime)
    model, model_args = build_model(cfg)
    synced = sync_bn and runtime.distributed
    if synced:
        model = convert_sync_batchnorm(model)
    model.to(runtime.device)
    save_run_config(cfg, out_dir, runtime)
    if runtime.is_main:
        print(f"{name}: {len(dataset)} images with labels from {dataset.label_dir}, {solver['ITER_MAX']} iterations "
              f"of {batch_text} on {runtime.world_size} process(es), {runtime.device}"
              f"{', synchronised BN' if synced else ''}", flush=True)
    final = train(recipe(cfg, model), cfg, model, model_args, loader, runtime, out_dir,
                  resume_path(args.resume, out_dir), show_progress=not args.no_progress, validate_fn=validate_fn)
    runtime.close()
    return final


def entry_main(run, argv, description, default_config):
    """Parse, run ``run(cfg, args)``; user errors end in one line, not a traceback."""
    args = entry_args(argv, description, default_config)
    try:
        return run(entry_config(args), args)
    except (voc.DataError, checkpoints.CheckpointError, config_module.ConfigError, ValueError) as error:
        sys.exit(f"error: {error}")
