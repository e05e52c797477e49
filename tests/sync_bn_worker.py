"""Run by tests/test_sync_bn.py under torchrun (2 processes, gloo): one training step of a small conv+BN
net on half of a fixed global batch per process; rank 0 writes the loss and the updated weights."""

import sys

import torch
import torch.distributed as dist

sys.path.insert(0, sys.argv[2])
from tests.test_sync_bn import global_batch, small_net, step  # noqa: E402
from utils.sync_bn import convert_sync_batchnorm  # noqa: E402

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
net = convert_sync_batchnorm(small_net())
ddp = torch.nn.parallel.DistributedDataParallel(net)
images, labels = global_batch()
loss = step(ddp, images[rank::world], labels[rank::world])
loss_tensor = torch.tensor([loss])
dist.all_reduce(loss_tensor)
if rank == 0:
    torch.save({"loss": loss_tensor.item() / world, "state": net.state_dict()}, sys.argv[1])
dist.destroy_process_group()
