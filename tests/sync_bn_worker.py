"""Run by tests/test_sync_bn.py under torchrun (2 processes, gloo): one training step of a small conv+BN
net on half of a fixed global batch per process; rank 0 writes the loss and the updated weights."""

import sys

import torch
import torch.distributed as dist

sys.path.insert(0, sys.argv[2])
from tests.test_sync_bn import global_batch, small_net, step  # noqa: E402
from utils.distributed import Runtime  # noqa: E402
from utils.sync_bn import convert_sync_batchnorm  # noqa: E402


def train_one_step(runtime, out_path):
    """Everything that holds the DDP model lives here, so it is gone before ``runtime.close()``."""
    net = convert_sync_batchnorm(small_net())
    ddp = torch.nn.parallel.DistributedDataParallel(net)
    images, labels = global_batch()
    loss = step(ddp, images[runtime.rank::runtime.world_size], labels[runtime.rank::runtime.world_size])
    loss_tensor = runtime.all_reduce_sum(torch.tensor([loss]))
    if runtime.is_main:
        torch.save({"loss": loss_tensor.item() / runtime.world_size, "state": net.state_dict()}, out_path)


runtime = Runtime("cpu")
assert dist.get_backend() == "gloo"
train_one_step(runtime, sys.argv[1])
runtime.close()
