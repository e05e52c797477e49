"""The training loop of every trainer: stage 1 (classifier), stage 2 (refinement), DeepLab-V2 and DeepLab-V3+.

A trainer hands over a :class:`Trainer` (model, optimizer with its parameter groups, loss, training mode,
validation) and a :class:`Schedule` (how many optimizer updates, the lr of each, when to save and validate);
:func:`run` does the rest: DDP, AMP, gradient accumulation, ``last.pth`` and resume, the run log.

Everything is counted in optimizer updates; an epoch-based trainer is one whose schedule has an
``epoch_length`` (updates per epoch), saves at every epoch's end and whose lr is constant within an epoch.

Resuming gives exactly the run that was not interrupted. The data order is a function of (seed, epoch) only
(:class:`ResumableSampler`), and every sample's augmentation draws from torch's generator seeded from
(seed, epoch, index) (:class:`SeededSamples`), so neither a restart in the middle of an epoch, nor the number
of loader workers, nor which worker loads a sample changes what the network sees.
"""

import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from utils import checkpoints
from utils import config as config_module
from utils.config import ConfigError
from utils.io import append_jsonl, atomic_write, progress
from utils.sync_bn import convert_sync_batchnorm
from utils.voc import DataError


def seed_everything(seed, rank=0):
    """Seed Python's, NumPy's and torch's global generators (before the model is built: its init draws)."""
    seed = int(seed) + int(rank)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --- data order ------------------------------------------------------------------------------------------

def _derived_seed(*words):
    return int(np.random.SeedSequence([int(w) for w in words]).generate_state(1)[0])


def sample_seed(seed, epoch, index):
    """The augmentation seed of dataset item ``index`` in ``epoch``: independent streams for every triple."""
    return _derived_seed(seed, epoch, index, 1)


class ResumableSampler(torch.utils.data.Sampler):
    """A shuffled order per epoch drawn from (seed, epoch), split over ``world_size`` ranks (the order padded
    with its own start to a multiple of the ranks, as DistributedSampler does). Yields ``(index, seed)``
    pairs for :class:`SeededSamples`. ``set_position(epoch, skip)`` chooses the epoch and how many of this
    rank's samples of it were already used (a run resumed in the middle of an epoch)."""

    def __init__(self, size, seed, rank=0, world_size=1):
        if size < 1:
            raise DataError("no training images: the list is empty")
        self.size, self.seed, self.rank, self.world_size = int(size), int(seed), int(rank), int(world_size)
        self.per_rank = -(-self.size // self.world_size)
        self.epoch, self.skip = 0, 0

    def set_position(self, epoch, skip=0):
        self.epoch, self.skip = int(epoch), int(skip)

    def order(self, epoch):
        """This rank's dataset indices for ``epoch``."""
        generator = torch.Generator().manual_seed(_derived_seed(self.seed, epoch, 0, 0))
        order = torch.randperm(self.size, generator=generator).tolist()
        order += order[: self.per_rank * self.world_size - self.size]
        return order[self.rank::self.world_size]

    def __len__(self):
        return self.per_rank

    def __iter__(self):
        for index in self.order(self.epoch)[self.skip:]:
            yield index, sample_seed(self.seed, self.epoch, index)


class SeededSamples(torch.utils.data.Dataset):
    """Loads ``dataset[index]`` for an ``(index, seed)`` key with torch's generator seeded from ``seed`` (and
    restored afterwards): the random transforms then depend on the key alone."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        index, seed = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


def make_train_loader(dataset, *, batch_size, workers, seed, runtime, drop_last, collate_fn=None):
    """The training loader: ``batch_size`` is the global batch, split over the processes."""
    if batch_size < 1 or seed < 0:
        raise ValueError(f"batch_size must be at least 1 and seed 0 or more, not {batch_size} and {seed}")
    if batch_size % runtime.world_size:
        raise ConfigError(f"train.batch_size {batch_size} (the global batch) is not divisible by {runtime.world_size} "
                          "processes")
    local = batch_size // runtime.world_size
    sampler = ResumableSampler(len(dataset), seed, runtime.rank, runtime.world_size)
    if drop_last and len(sampler) < local:
        raise DataError(f"{len(dataset)} images give no full batch of {batch_size}")
    # its own generator: the loader draws a worker seed at every epoch's start, which must not move the
    # global generator (dropout's) between a checkpoint and the next update
    return torch.utils.data.DataLoader(
        SeededSamples(dataset), batch_size=local, sampler=sampler, num_workers=workers, drop_last=drop_last,
        collate_fn=collate_fn, pin_memory=runtime.device.type == "cuda", persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(int(seed)))


def _batches(loader, start):
    """Batches from global batch number ``start`` on, forever, epoch after epoch: (epoch, batch) pairs."""
    epoch, offset = divmod(start, len(loader))
    while True:
        loader.sampler.set_position(epoch, offset * loader.batch_size)
        for batch in loader:
            yield epoch, batch
        epoch, offset = epoch + 1, 0


# --- what a trainer supplies -----------------------------------------------------------------------------

@dataclass
class Schedule:
    """How long a run is and when things happen, in optimizer updates."""

    updates: int  # optimizer updates in the whole run
    lr_at: Callable  # (group's base lr, finished updates) -> the lr of the next update
    save_every: int  # updates between writes of last.pth
    epoch_length: int | None = None  # updates per epoch for an epoch-based trainer (logs and checkpoints say epochs)
    val_every: int = 0  # updates between validations; 0: none
    select_best: bool = False  # keep best.pth, the last.pth of the best validation mIoU
    keep_checkpoints: bool = False  # also checkpoint_<update>.pth at each save and checkpoint_final.pth at the end
    accumulate: int = 1  # loader batches per update
    amp: str | None = None  # "bf16" or "fp16" autocast on CUDA; ignored on the CPU
    log_every: int = 50  # updates between "train" records in log.jsonl


@dataclass
class Trainer:
    """The parts of a training run that differ between the trainers."""

    kind: str  # checkpoint kind ("classifier", "refine", "deeplab_v2", "deeplab_v3plus")
    model: nn.Module
    model_args: dict  # what rebuilds the model (stored in every checkpoint)
    optimizer: torch.optim.Optimizer  # its groups carry ``base_lr``
    loss: Callable  # (net, batch with tensors on the device) -> loss tensor
    train_mode: Callable = nn.Module.train  # (net) -> None before every update (DeepLab-V2 keeps BN frozen)
    validate: Callable | None = None  # (model) -> {"miou": ..., ...}; called on every rank, must reduce;
    # may add "pictures": {tag: uint8 (H, W, 3)} for TensorBoard
    sync_bn: bool = False  # synchronised BN under torchrun


def _check(schedule):
    """The schedule's own contract (a trainer's config is checked with key names by ``config.load_run``)."""
    for name in ("updates", "save_every", "accumulate", "log_every"):
        if getattr(schedule, name) < 1:
            raise ValueError(f"Schedule.{name} must be at least 1, not {getattr(schedule, name)}")
    if schedule.val_every < 0:
        raise ValueError(f"Schedule.val_every must be 0 (never) or more, not {schedule.val_every}")
    if schedule.amp not in (None, "bf16", "fp16"):
        raise ValueError(f"Schedule.amp must be bf16, fp16 or None, not {schedule.amp!r}")


def _autocast(amp, device):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp])
    return contextlib.nullcontext()


def _to_device(batch, device):
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class RunLog:
    """``log.jsonl``: one JSON record per line, written by the main process only. When the ``tensorboard``
    package is installed, the numbers also go to TensorBoard (``<out>/tensorboard``, tag ``<event>/<name>``
    over the optimizer updates), with the pictures a validation returns."""

    def __init__(self, path, enabled=True):
        self.path, self.enabled, self.start = Path(path), enabled, time.time()
        self.board = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional: the JSON log is complete without it
                pass
            else:
                self.board = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))

    def write(self, event, **record):
        if not self.enabled:
            return
        append_jsonl(self.path, {"time": round(time.time() - self.start, 2), "event": event, **record})
        if self.board is not None:
            for name, value in record.items():
                if name not in ("iteration", "epoch") and isinstance(value, (int, float)):
                    self.board.add_scalar(f"{event}/{name}", value, record["iteration"])

    def pictures(self, pictures, iteration):
        """``pictures``: {tag: uint8 (H, W, 3) array}, TensorBoard only."""
        if self.board is not None:
            for tag, array in pictures.items():
                self.board.add_image(tag, array, iteration, dataformats="HWC")

    def close(self):
        if self.board is not None:
            self.board.close()


def resume_path(arg, out_dir):
    """``--resume``: a path, or ``auto`` for ``<out_dir>/last.pth`` when it exists."""
    if arg in (None, ""):
        return None
    if arg == "auto":
        last = Path(out_dir) / "last.pth"
        return last if last.is_file() else None
    return Path(arg)


def _restore(path, trainer, scaler, runtime):
    state = checkpoints.load_file(path)
    if not checkpoints.is_ours(state) or state.get("kind") != trainer.kind:
        raise checkpoints.CheckpointError(f"{path} is not a {trainer.kind} checkpoint of this project; cannot resume")
    if dict(state.get("model_args", {})) != dict(trainer.model_args):
        raise checkpoints.CheckpointError(f"{path} holds a model built with {state.get('model_args')}, this run builds "
                                          f"{trainer.model_args}; resume with the config it was trained with")
    saved = (state.get("optimizer") or {}).get("param_groups") or [{}]
    ours = trainer.optimizer.state_dict()["param_groups"]
    if state.get("optimizer") is not None and (len(saved) != len(ours) or set(saved[0]) != set(ours[0])):
        raise checkpoints.CheckpointError(f"{path} was trained with another optimizer or other parameter groups "
                                          "(train.optimizer, lr groups); resume with the config it was trained with")
    try:
        checkpoints.unwrap(trainer.model).load_state_dict(state["model"])
        if state.get("optimizer") is not None:
            trainer.optimizer.load_state_dict(state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as error:
        raise checkpoints.CheckpointError(
            f"{path} does not fit this run's model or optimizer: {str(error).splitlines()[0]}") from None
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    rng = state.get("rng")
    if rng is not None and len(rng) == runtime.world_size:  # another process count: fresh generators
        torch.set_rng_state(rng[runtime.rank]["cpu"])
        if rng[runtime.rank]["cuda"] is not None and runtime.device.type == "cuda":
            torch.cuda.set_rng_state(rng[runtime.rank]["cuda"], runtime.device)
    return state


def _rng_state(device):
    """This process's generator states: the global CPU one (dropout on the CPU) and the device's."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}


def run(trainer, schedule, loader, runtime, out_dir, *, config=None, resume=None, show_progress=True, banner=None):
    """Train until ``schedule.updates`` updates are done; returns the path of the last checkpoint written.

    Keeps ``config`` in ``out_dir/config.yaml`` and prints ``banner`` first; leaves the process group at the
    end (not on an error: leaving waits for every rank, and torchrun ends the others when one fails).

    Writes ``last.pth`` (atomically) every ``save_every`` updates and at the end, so ``resume`` (a checkpoint
    of the same kind) continues after its update with the same data, augmentation and lr as an uninterrupted
    run. Validation (every rank, reduced by ``trainer.validate``) is logged and, with ``select_best``, keeps
    ``best.pth``; it never changes the training.
    """
    out_dir = Path(out_dir)
    _check(schedule)
    if not resume and (out_dir / "last.pth").is_file():  # a new run would replace it and mix the two logs
        raise ConfigError(f"{out_dir} already holds a training run (last.pth): continue it with --resume auto, or "
                          "choose another --out")
    model, optimizer = trainer.model, trainer.optimizer
    epoch_length = schedule.epoch_length
    use_amp = bool(schedule.amp) and runtime.device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and schedule.amp == "fp16")
    done, best = 0, {}
    if resume:  # before anything is written: a checkpoint that does not fit leaves the folder as it was
        state = _restore(resume, trainer, scaler, runtime)
        if "iteration" not in state:  # written by this project's trainers before the engine
            raise checkpoints.CheckpointError(f"{resume} records no update count; it cannot be resumed exactly")
        done, best = int(state["iteration"]), state.get("best", {})
    if runtime.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(out_dir / "config.yaml", lambda tmp: Path(tmp).write_text(config_module.dump(config or {})))
        if banner:
            print(banner, flush=True)
        if schedule.amp and not use_amp:
            print(f"AMP ({schedule.amp}) is CUDA-only: training in float32 on {runtime.device}")
        if resume:
            where = f"epoch {done // epoch_length}" if epoch_length else f"iteration {done}"
            print(f"resumed from {resume} after {where}", flush=True)
    net = model
    if runtime.distributed:
        if trainer.sync_bn:
            net = model = trainer.model = convert_sync_batchnorm(model)
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    log = RunLog(out_dir / "log.jsonl", enabled=runtime.is_main)
    batches = _batches(loader, done * schedule.accumulate)

    def save(name, metrics, rng):
        extra = {"iteration": done, "best": best, "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                 "rng": rng}
        checkpoints.save(out_dir / name, kind=trainer.kind, model=model, model_args=trainer.model_args,
                         optimizer=optimizer, epoch=done // epoch_length if epoch_length else 0, config=config,
                         metrics=metrics, extra=extra)

    running, seen = 0.0, 0
    bar = progress(range(done, schedule.updates), quiet=not show_progress or not runtime.is_main,
                   desc="epochs" if epoch_length else "iterations", unit="update")
    for _ in bar:
        for group in optimizer.param_groups:
            group["lr"] = schedule.lr_at(group["base_lr"], done)
        trainer.train_mode(net)
        optimizer.zero_grad(set_to_none=True)
        loss_value = 0.0
        for _ in range(schedule.accumulate):
            _, batch = next(batches)
            with _autocast(schedule.amp if use_amp else None, runtime.device):
                loss = trainer.loss(net, _to_device(batch, runtime.device)) / schedule.accumulate
            scaler.scale(loss).backward()
            loss_value += loss.item()
        scaler.step(optimizer)
        scaler.update()
        done += 1
        running, seen = running + loss_value, seen + 1
        lr = optimizer.param_groups[0]["lr"]
        bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{lr:.2e}")
        where = {"iteration": done} | ({"epoch": -(-done // epoch_length)} if epoch_length else {})
        if done % schedule.log_every == 0 or done == schedule.updates:
            log.write("train", **where, loss=loss_value, lr=lr)

        metrics = {}
        if trainer.validate is not None and schedule.val_every and done % schedule.val_every == 0:
            results = dict(trainer.validate(model))
            log.pictures(results.pop("pictures", {}), done)
            metrics = {f"val_{k}": float(v) for k, v in results.items()}
            log.write("val", **where, **metrics)
        saving = done % schedule.save_every == 0 or done == schedule.updates
        if saving:
            metrics = {"train_loss": running / seen, **metrics}
            running, seen = 0.0, 0
        rng = runtime.gather(_rng_state(runtime.device)) if saving or metrics else None  # every rank's
        if runtime.is_main and (saving or metrics):
            improved = "val_miou" in metrics and metrics["val_miou"] > best.get("val_miou", -1.0)
            if improved:
                best = {"iteration": done, "val_miou": metrics["val_miou"]}
            if saving:
                save("last.pth", metrics, rng)
                if schedule.keep_checkpoints:
                    save(f"checkpoint_{done}.pth", metrics, rng)
            if improved and schedule.select_best:
                save("best.pth", metrics, rng)
            at_epoch_end = epoch_length and done % epoch_length == 0
            if at_epoch_end:  # the epoch's mean loss; its validation is in the "val" record
                log.write("epoch", **where, train_loss=metrics["train_loss"])
            label = f"epoch {done // epoch_length}" if at_epoch_end else f"iteration {done}"
            text = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            print(f"{label}: {text}, lr {lr:.3e}", flush=True)
        runtime.barrier()
    if runtime.is_main and schedule.keep_checkpoints:
        save("checkpoint_final.pth", {}, None)
    log.close()
    del net, batches  # DDP's and the loader workers' resources go before the process group (Runtime.close)
    runtime.close()
    return out_dir / ("checkpoint_final.pth" if schedule.keep_checkpoints else "last.pth")
