"""Pieces every training script shares: seeding, optimizers, epoch-wise lr schedules, resume, logging."""

import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from utils import checkpoints
from utils.io import append_jsonl


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
