"""Pieces every training script shares: seeding, optimizers, epoch-wise lr schedules, resume, logging."""

import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from utils import checkpoints
from utils.io import append_jsonl, progress


def seed_everything(seed, rank=0):
    seed = int(seed) + int(rank)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_optimizer(groups, cfg):
    """SGD (optionally Nesterov) or Adam over ``groups``; each group's ``lr`` is remembered as ``base_lr``."""
    for group in groups:
        group["base_lr"] = group["lr"]
    name = cfg.get("optimizer", "sgd")
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg.get("momentum", 0.9),
                               nesterov=cfg.get("nesterov", False), weight_decay=cfg.get("weight_decay", 0.0))
    if name == "adam":
        return torch.optim.Adam(groups, lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))
    raise ValueError(f"unknown optimizer {name!r} (sgd or adam)")


def epoch_lr_factor(epoch, cfg):
    """The lr multiplier for a 1-based ``epoch``: ``step`` (x0.1 from each of ``decay_epochs`` on, reference
    §2.7 and §4.3) or ``cosine`` (half a cosine over ``epochs``, constant within an epoch)."""
    schedule = cfg.get("schedule", "step")
    if schedule == "step":
        return 0.1 ** sum(epoch >= point for point in cfg.get("decay_epochs", ()))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * (epoch - 1) / cfg["epochs"]))
    raise ValueError(f"unknown schedule {schedule!r} (step or cosine)")


def set_lr(optimizer, factor):
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def resume(path, model, optimizer, kind):
    """Load model and optimizer state from one of our checkpoints; returns it (its ``epoch`` is the last
    finished epoch)."""
    state = checkpoints.load_file(path)
    if not checkpoints.is_ours(state) or state.get("kind") != kind:
        raise checkpoints.CheckpointError(f"{path} is not a {kind} checkpoint of this project; cannot resume from it")
    checkpoints.unwrap(model).load_state_dict(state["model"])
    if state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    return state


def resume_path(arg, out_dir):
    """``--resume``: a path, or ``auto`` for ``<out_dir>/last.pth`` when it exists."""
    if arg in (None, ""):
        return None
    if arg == "auto":
        last = Path(out_dir) / "last.pth"
        return last if last.is_file() else None
    return Path(arg)


class RunLog:
    """JSON-lines log (``log.jsonl``), one record per call, written by the main process only."""

    def __init__(self, path, enabled=True):
        self.path = Path(path)
        self.enabled = enabled
        self.start = time.time()

    def write(self, **record):
        if self.enabled:
            append_jsonl(self.path, {"time": round(time.time() - self.start, 2), **record})


def fit(*, cfg, runtime, model, model_args, kind, optimizer, train_loader, loss_fn, validate_fn=None,
        resume_arg=None, show_progress=True):
    """The epoch loop shared by the training scripts.

    ``loss_fn(net, batch) -> loss`` runs one step's forward; ``validate_fn(model) -> metrics`` (main process
    only) may return ``miou``, which drives ``best.pth`` when ``val.select_best``. Every epoch writes
    ``last.pth`` (atomic), so ``--resume auto`` continues after the last finished epoch.
    """
    from torch.nn.parallel import DistributedDataParallel

    out_dir = Path(cfg["output"]["dir"])
    tcfg = cfg["train"]
    log = RunLog(out_dir / "log.jsonl", enabled=runtime.is_main)
    start_epoch, best = 1, {}
    resume_from = resume_path(resume_arg, out_dir)
    if resume_from:
        state = resume(resume_from, model, optimizer, kind)
        start_epoch, best = state["epoch"] + 1, state.get("best", {})
        if runtime.is_main:
            print(f"resumed from {resume_from} after epoch {state['epoch']}")
    net = model
    if runtime.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids)

    step = (start_epoch - 1) * len(train_loader)
    for epoch in range(start_epoch, tcfg["epochs"] + 1):
        set_lr(optimizer, epoch_lr_factor(epoch, tcfg))
        if hasattr(train_loader.sampler, "set_epoch"):
            train_loader.sampler.set_epoch(epoch)
        net.train()
        running, seen = 0.0, 0
        quiet = not show_progress or not runtime.is_main
        bar = progress(train_loader, quiet=quiet, desc=f"epoch {epoch}/{tcfg['epochs']}")
        for batch in bar:
            loss = loss_fn(net, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            running, seen = running + loss.item(), seen + 1
            bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}")
            if step % cfg["output"]["log_every"] == 0:
                log.write(event="train", epoch=epoch, step=step, loss=loss.item(), lr=optimizer.param_groups[0]["lr"])
        metrics = {"train_loss": running / max(seen, 1)}
        every = cfg["val"]["every"]
        if validate_fn is not None and runtime.is_main and every and epoch % every == 0:
            metrics.update({f"val_{k}": v for k, v in validate_fn(model).items()})
        if runtime.is_main:
            improved = "val_miou" in metrics and metrics["val_miou"] > best.get("val_miou", -1.0)
            if improved:
                best = {"epoch": epoch, "val_miou": metrics["val_miou"]}
            save = dict(kind=kind, model=model, model_args=model_args, optimizer=optimizer, epoch=epoch,
                        config=cfg, metrics=metrics, extra={"best": best})
            checkpoints.save(out_dir / "last.pth", **save)
            if improved and cfg["val"]["select_best"]:
                checkpoints.save(out_dir / "best.pth", **save)
            log.write(event="epoch", epoch=epoch, step=step, **metrics)
            print(f"epoch {epoch}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
        runtime.barrier()
    return out_dir


def make_train_loader(dataset, cfg, runtime):
    """Shuffled loader with the global batch split over processes (DistributedSampler under torchrun)."""
    from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

    from utils.voc import collate

    batch, workers, seed = cfg["train"]["batch_size"], cfg["data"]["num_workers"], cfg["train"]["seed"]
    if batch % runtime.world_size:
        raise ValueError(f"global batch {batch} is not divisible by {runtime.world_size} processes")
    if runtime.distributed:
        sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=batch // runtime.world_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate, pin_memory=runtime.device.type == "cuda", persistent_workers=workers > 0)


def save_run_config(cfg, out_dir, runtime):
    """Main process: create ``out_dir`` and keep the run's config in it (config.yaml)."""
    from utils import config as config_module
    from utils.io import atomic_write

    out_dir = Path(out_dir)
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "config.yaml", lambda tmp: Path(tmp).write_text(config_module.dump(cfg)))


def parse_args(argv, default_config, description):
    """The command line every training script shares."""
    import argparse

    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_config)
    parser.add_argument("--voc-root", default=None, help="overrides data.voc_root")
    parser.add_argument("--out-dir", default=None, help="overrides output.dir")
    parser.add_argument("--resume", default=None, help="a checkpoint path, or 'auto' for <out>/last.pth if present")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def load_config(args):
    from utils import config as config_module
    from utils.voc import DataError

    cfg = config_module.load(args.config, args.set)
    if args.voc_root:
        cfg["data"]["voc_root"] = args.voc_root
    if args.out_dir:
        cfg["output"]["dir"] = args.out_dir
    if not cfg["data"]["voc_root"]:
        raise DataError("no VOC root: pass --voc-root or set data.voc_root")
    return cfg


def training_main(train_fn, argv, default_config, description):
    """Parse the shared command line, run ``train_fn(cfg, args)``; user errors end in one line, not a trace."""
    import sys

    from utils import config as config_module
    from utils.voc import DataError

    args = parse_args(argv, default_config, description)
    try:
        return train_fn(load_config(args), args)
    except (DataError, checkpoints.CheckpointError, config_module.ConfigError) as error:
        sys.exit(f"error: {error}")


def make_eval_loader(dataset, cfg):
    from torch.utils.data import DataLoader

    from utils.voc import collate

    return DataLoader(dataset, batch_size=cfg["train"]["batch_size"], num_workers=cfg["data"]["num_workers"],
                      collate_fn=collate)


def run_fit(banner, runtime, **fit_kwargs):
    """Keep the config, say what runs, train with :func:`fit`, then leave the process group. Not on an error:
    leaving waits for every rank, and torchrun ends the others when one fails."""
    save_run_config(fit_kwargs["cfg"], fit_kwargs["cfg"]["output"]["dir"], runtime)
    if runtime.is_main:
        print(banner, flush=True)
    out_dir = fit(runtime=runtime, **fit_kwargs)
    runtime.close()
    return out_dir
