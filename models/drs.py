"""Discriminative Region Suppression (original §2.5).

DRS replaces the ReLU after a conv: ``y = min(relu(x), g * max_hw(relu(x)))``. The per-image, per-channel
spatial max is the "max extractor"; ``g`` is the "suppression controller", either a learned gate
``sigmoid(W @ GAP(relu(x)))`` or a fixed scalar delta. Activations above ``g`` times the channel's peak are
clipped, so the strongest (most discriminative) responses cannot dominate and attention spreads.

Two implementations of the same function: the reference (``fused=False``: PyTorch's relu, amax, mean, linear,
sigmoid and minimum, each kept by autograd with its own saved tensors) and the default fused one
(``drs_fused``: one autograd function with a hand-written backward). The fused function keeps only what its
backward needs: the output, which the next conv keeps anyway, and one byte per activation saying whether it
was clipped and whether it was its channel's peak, instead of the float ReLU output and its copies. Its
gradients follow PyTorch's rules exactly, ties included: ``torch.minimum`` gives half the gradient to each side
of a tie, ``torch.amax`` shares it equally between all maxima (the parity fixtures were made with them).
"""

import torch
import torch.nn.functional as F
from torch import nn

CLIPPED, PEAK = 1, 2  # bits of the saved code: relu(x) > threshold, relu(x) == the channel's max


class _FusedDRS(torch.autograd.Function):
    """``min(relu(x), g * max_hw(relu(x)))`` with ``g = sigmoid(mean_hw(relu(x)) @ weight.T)`` (learnable) or
    ``g = delta`` (``weight`` None)."""

    @staticmethod
    def forward(ctx, x, weight, delta):
        r = torch.relu(x)
        peak = r.amax(dim=(2, 3), keepdim=True)
        if weight is None:
            gate, pooled = None, None
            threshold = delta * peak
        else:
            pooled = r.mean(dim=(2, 3))
            gate = torch.sigmoid(F.linear(pooled, weight))[:, :, None, None]
            threshold = peak * gate
        y = torch.minimum(r, threshold)
        code = torch.gt(r, threshold).to(torch.uint8)
        code.add_(torch.eq(r, peak), alpha=PEAK)
        del r
        ctx.delta = delta
        ctx.save_for_backward(y, code, peak, threshold, gate, pooled, weight)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        y, code, peak, threshold, gate, pooled, weight = ctx.saved_tensors
        at_threshold = y == threshold  # relu(x) >= threshold: clipped, or a tie
        clipped = (code & CLIPPED).bool()
        tie = at_threshold & ~clipped
        half = grad_y * 0.5
        # torch.minimum: the smaller side takes the gradient, a tie gives half to each side
        grad_r = torch.where(at_threshold, torch.where(tie, half, 0.0), grad_y)
        grad_threshold = torch.where(clipped, grad_y, torch.where(tie, half, 0.0)).sum(dim=(2, 3), keepdim=True)
        if weight is None:
            grad_peak = grad_threshold * ctx.delta
            grad_weight = None
        else:
            grad_peak = grad_threshold * gate
            grad_z = (grad_threshold * peak * gate * (1 - gate))[:, :, 0, 0]  # sigmoid's derivative
            grad_weight = grad_z.t() @ pooled
            hw = y.shape[2] * y.shape[3]
            grad_r = grad_r + (grad_z @ weight)[:, :, None, None] / hw  # through the mean
        # torch.amax: the gradient shared equally by every maximum of the channel
        at_peak = (code & PEAK).bool()
        count = at_peak.sum(dim=(2, 3), keepdim=True).clamp_min(1)
        grad_r = grad_r + torch.where(at_peak, grad_peak / count, 0.0)
        # relu: relu(x) > 0 where it passed with y > 0, or reached a positive threshold, or was clipped above it
        positive = torch.where(at_threshold, (threshold > 0) | clipped, y > 0)
        grad_x = torch.where(positive, grad_r, 0.0)
        return grad_x, grad_weight, None


def drs_fused(x, weight=None, delta=None):
    """The fused DRS activation: learnable with ``weight`` (C, C), fixed with ``delta``. Falls back to the
    reference ops where nothing needs a gradient (inference) and under autocast (mixed dtypes)."""
    if not torch.is_grad_enabled() or not (x.requires_grad or (weight is not None and weight.requires_grad)) or \
            torch.is_autocast_enabled(x.device.type):
        return drs_reference(x, weight, delta)
    return _FusedDRS.apply(x, weight, delta)


def drs_reference(x, weight=None, delta=None):
    """The DRS activation in PyTorch's own ops (the reference the fused function is tested against)."""
    x = torch.relu(x)
    peak = x.amax(dim=(2, 3), keepdim=True)
    if weight is None:
        return torch.minimum(x, delta * peak)
    return torch.minimum(x, peak * torch.sigmoid(F.linear(x.mean(dim=(2, 3)), weight))[:, :, None, None])


class LearnableDRS(nn.Module):
    """DRS with a learned per-image, per-channel suppression gate in (0, 1).

    ``fc`` is a bias-free ``Linear(C, C)`` followed by a sigmoid; its weight is the module's only
    parameter (key ``fc.0.weight``, as in the released checkpoints).
    """

    def __init__(self, channels, fused=True):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels, bias=False), nn.Sigmoid())
        self.fused = fused

    def gate(self, x):
        """``g`` of shape (B, C, 1, 1) for already-ReLU'd features ``x``."""
        return self.fc(x.mean(dim=(2, 3)))[:, :, None, None]

    def forward(self, x):
        return (drs_fused if self.fused else drs_reference)(x, weight=self.fc[0].weight)


class FixedDRS(nn.Module):
    """DRS with a fixed suppression ratio ``delta`` in (0, 1]: ``min(relu(x), delta * max_hw(relu(x)))``."""

    def __init__(self, delta, fused=True):
        super().__init__()
        if not 0.0 < delta <= 1.0:
            raise ValueError(f"fixed DRS needs 0 < delta <= 1, got {delta}")
        self.delta = float(delta)
        self.fused = fused

    def forward(self, x):
        return (drs_fused if self.fused else drs_reference)(x, delta=self.delta)

    def extra_repr(self):
        return f"delta={self.delta}"


def make_activation(channels, drs):
    """The activation placed after a conv: ``drs`` is ``"learnable"``, a float delta, or ``None`` for plain ReLU.

    ``0`` means learnable, as the original's ``--delta=0`` does.
    """
    if drs is None or drs == "relu":
        return nn.ReLU(inplace=False)
    if drs == "learnable" or drs == 0:
        return LearnableDRS(channels)
    return FixedDRS(float(drs))
