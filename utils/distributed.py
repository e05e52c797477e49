"""Device choice and torchrun / DDP set-up shared by every training and inference script."""

import gc
import os

import numpy as np
import torch
import torch.distributed as dist

from utils.config import ConfigError


def resolve_device(name=None):
    """``"auto"``/None → CUDA when available, else CPU; otherwise the device named."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {name!r} is not supported: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name} requested but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def inference_device(name=None):
    """The device for the map-making and evaluation tools: :func:`resolve_device`, with TF32 turned off on CUDA.

    Their outputs are held to the original's float32 outputs (parity fixtures; the original ran on pre-TF32
    GPUs), and on an H200 PyTorch's default TF32 convolutions moved 1.4 % of a localization map's pixels by up
    to 2 grey levels. Inference costs little next to training, which keeps PyTorch's default (TF32 on)."""
    device = resolve_device(name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return device


def shard(items, runtime):
    """This process's share of an evaluation list (every ``world_size``-th item from its rank)."""
    return list(items)[runtime.rank::runtime.world_size]


class Runtime:
    """Process-group facts: rank, world size, device. Works unchanged under ``torchrun`` and without it."""

    def __init__(self, device=None):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.distributed = self.world_size > 1
        base = resolve_device(device)
        if base.type == "cuda":
            base = torch.device("cuda", self.local_rank if self.distributed else (base.index or 0))
            torch.cuda.set_device(base)
        self.device = base
        if self.distributed and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if base.type == "cuda" else "gloo")

    @property
    def is_main(self):
        return self.rank == 0

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor):
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, obj):
        """Every process's ``obj`` (picklable), in rank order, on every process."""
        if not self.distributed:
            return [obj]
        objects = [None] * self.world_size
        dist.all_gather_object(objects, obj)
        return objects

    def sum(self, array):
        """``array`` (NumPy) summed over the processes; float64 or int64, as given."""
        if not self.distributed:
            return array
        tensor = torch.from_numpy(np.ascontiguousarray(array))
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor.numpy()

    def close(self):
        """Leave the process group once every rank is done. Call it after the DDP model is gone: collectives
        issued during backward keep a Python object, and torch (2.14) aborts the process at exit when a gloo
        thread drops the last of them while the interpreter shuts down. Freeing them here, on this thread,
        with a barrier so no rank leaves early, avoids that race (pytorch/pytorch#182083)."""
        if self.distributed and dist.is_initialized():
            gc.collect()
            dist.barrier()
            dist.destroy_process_group()
