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
    def forward(ctx, x, weight, delta, inplace):
        r = x.relu_() if inplace else torch.relu(x)
        peak = r.amax(dim=(2, 3), keepdim=True)
        if weight is None:
            gate, pooled = None, None
            threshold = delta * peak
        else:
            pooled = r.mean(dim=(2, 3))
            gate = torch.sigmoid(F.linear(pooled, weight))[:, :, None, None]
            threshold = peak * gate
        code = torch.gt(r, threshold).view(torch.uint8)  # bool -> uint8 without a copy
        code.add_(torch.eq(r, peak).view(torch.uint8), alpha=PEAK)
        y = r.clamp_(max=threshold)  # min(r, threshold), in r's memory
        if inplace:
            ctx.mark_dirty(x)
        ctx.delta = delta
        ctx.save_for_backward(y, code, peak, threshold, gate, pooled, weight)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        y, code, peak, threshold, gate, pooled, weight = ctx.saved_tensors
        clipped = (code & CLIPPED).view(torch.bool)  # relu(x) > threshold
        # torch.minimum gives the smaller side the gradient and half of it to each side of a tie. With
        # reached = relu(x) >= threshold (clipped or tied), the relu side's share is 1 - (reached + clipped) / 2
        # and the threshold's (reached + clipped) / 2: one float buffer, reused for the result.
        share = (y == threshold).to(grad_y.dtype).add_(clipped)
        grad_threshold = torch.einsum("bchw,bchw->bc", grad_y, share)[:, :, None, None].mul_(0.5)
        grad_r = share.mul_(-0.5).add_(1).mul_(grad_y)
        if weight is None:
            grad_peak = grad_threshold * ctx.delta
            grad_weight = None
        else:
            grad_peak = grad_threshold * gate
            grad_z = (grad_threshold * peak * gate * (1 - gate))[:, :, 0, 0]  # through the sigmoid
            grad_weight = grad_z.t() @ pooled
            grad_r.add_((grad_z @ weight)[:, :, None, None], alpha=1 / (y.shape[2] * y.shape[3]))  # the mean
        # torch.amax shares the gradient equally between the channel's maxima (few positions: indexed)
        at_peak = code >= PEAK
        count = at_peak.sum(dim=(2, 3), keepdim=True).clamp_min_(1)
        grad_r[at_peak] += (grad_peak / count).expand_as(grad_r)[at_peak]
        # relu: zero where relu(x) == 0, i.e. y == 0 without a positive value clipped to a zero threshold
        grad_r.masked_fill_((y == 0) & ~clipped, 0)
        return grad_r, grad_weight, None, None


def drs_fused(x, weight=None, delta=None, inplace=False):
    """The fused DRS activation: learnable with ``weight`` (C, C), fixed with ``delta``. ``inplace`` reuses
    ``x``'s memory (the conv output before it, which nothing else needs). Without gradients (inference) the
    same ops run without saving anything; under autocast (mixed dtypes) the reference ops run."""
    if torch.is_autocast_enabled(x.device.type):
        return drs_reference(x, weight, delta)
    if not torch.is_grad_enabled() or not (x.requires_grad or (weight is not None and weight.requires_grad)):
        r = x.relu_() if inplace else torch.relu(x)
        peak = r.amax(dim=(2, 3), keepdim=True)
        if weight is None:
            return r.clamp_(max=delta * peak)
        return r.clamp_(max=peak * torch.sigmoid(F.linear(r.mean(dim=(2, 3)), weight))[:, :, None, None])
    return _FusedDRS.apply(x, weight, delta, inplace)


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

    def __init__(self, channels, fused=True, inplace=False):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels, bias=False), nn.Sigmoid())
        self.fused, self.inplace = fused, inplace

    def gate(self, x):
        """``g`` of shape (B, C, 1, 1) for already-ReLU'd features ``x``."""
        return self.fc(x.mean(dim=(2, 3)))[:, :, None, None]

    def forward(self, x):
        if not self.fused:
            return drs_reference(x, weight=self.fc[0].weight)
        return drs_fused(x, weight=self.fc[0].weight, inplace=self.inplace)


class FixedDRS(nn.Module):
    """DRS with a fixed suppression ratio ``delta`` in (0, 1]: ``min(relu(x), delta * max_hw(relu(x)))``."""

    def __init__(self, delta, fused=True, inplace=False):
        super().__init__()
        if not 0.0 < delta <= 1.0:
            raise ValueError(f"fixed DRS needs 0 < delta <= 1, got {delta}")
        self.delta = float(delta)
        self.fused, self.inplace = fused, inplace

    def forward(self, x):
        if not self.fused:
            return drs_reference(x, delta=self.delta)
        return drs_fused(x, delta=self.delta, inplace=self.inplace)

    def extra_repr(self):
        return f"delta={self.delta}"


def make_activation(channels, drs):
    """The activation placed after a conv: ``drs`` is ``"learnable"``, a float delta, or ``None`` for plain ReLU.

    ``0`` means learnable, as the original's ``--delta=0`` does. In place, as torchvision's VGG: the conv's
    output is needed by nothing else.
    """
    if drs is None or drs == "relu":
        return nn.ReLU(inplace=True)
    if drs == "learnable" or drs == 0:
        return LearnableDRS(channels, inplace=True)
    return FixedDRS(float(drs), inplace=True)
