"""Synchronised batch normalisation that works under any process group (gloo on CPU, NCCL on GPU).

``torch.nn.SyncBatchNorm`` refuses CPU modules, so the multi-process path could not be tested without GPUs.
This one all-reduces the per-channel sum, sum of squares and count with a differentiable all-reduce, so the
statistics and their gradients are those of the global batch; outside training or a process group it is a
plain ``BatchNorm2d``.
"""

import torch
import torch.distributed as dist
from torch import nn


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; the gradient of a sum is the sum of the gradients."""

    @staticmethod
    def forward(ctx, tensor):
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class SyncBatchNorm2d(nn.BatchNorm2d):
    def forward(self, x):
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        channels = x.shape[1]
        count = torch.full((1,), x.numel() / channels, dtype=x.dtype, device=x.device)
        packed = _AllReduceSum.apply(torch.cat([x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), count]))
        total = packed[-1]
        mean = packed[:channels] / total
        var = packed[channels:2 * channels] / total - mean * mean
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.mul_(1 - momentum).add_(momentum * mean)
                self.running_var.mul_(1 - momentum).add_(momentum * var * total / (total - 1))
                self.num_batches_tracked += 1
        y = (x - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


def convert_sync_batchnorm(module):
    """Replace every ``BatchNorm2d`` of ``module`` by a :class:`SyncBatchNorm2d` with the same state. The
    affine parameters are the same objects, so an optimizer built before the conversion still updates them."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, SyncBatchNorm2d):
        synced = SyncBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        synced.load_state_dict(module.state_dict())
        synced = synced.to(next(iter(module.state_dict().values())).device)
        if module.affine:
            synced.weight, synced.bias = module.weight, module.bias
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        setattr(module, name, convert_sync_batchnorm(child))
    return module
