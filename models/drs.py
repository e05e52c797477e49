"""Discriminative Region Suppression (original §2.5).

DRS replaces the ReLU after a conv: ``y = min(relu(x), g * max_hw(relu(x)))``. The per-image, per-channel
spatial max is the "max extractor"; ``g`` is the "suppression controller", either a learned gate
``sigmoid(W @ GAP(relu(x)))`` or a fixed scalar delta. Activations above ``g`` times the channel's peak are
clipped, so the strongest (most discriminative) responses cannot dominate and attention spreads.

Two implementations of the same function: the reference (``fused=False``: PyTorch's relu, amax, mean, linear,
sigmoid and minimum, each kept by autograd with its own saved tensors) and the default fused one
(``drs_fused``: one autograd function with a hand-written backward). The fused function keeps only what its
backward needs: one byte per activation (clipped, tied with the threshold, the channel's peak, zero after the
relu) and a few (N, C) numbers, instead of the float ReLU output and its copies. Its gradients follow
PyTorch's rules exactly, ties included: ``torch.minimum`` gives half the gradient to each side of a tie,
``torch.amax`` shares it equally between all maxima (the parity fixtures were made with them). On the CPU its
loops are compiled C (``models/drs_cpu.c``, see ``models/drs_kernel.py``); elsewhere they are PyTorch ops.
"""

import torch
import torch.nn.functional as F
from torch import nn

from models import drs_kernel

# Bits of the byte saved per activation for the backward (r = relu(x)); models/drs_cpu.c uses the same.
CLIPPED, PEAK, TIE, DEAD = 1, 2, 4, 8  # r > threshold, r == the channel's max, r == threshold, not r > 0


def _drs_forward(x, weight, delta, inplace, with_code):
    """``(y, code, peak, gate, pooled)``; peak, gate and pooled are (N, C), gate and pooled None for a fixed
    delta, code None unless ``with_code``. The compiled CPU loops where they apply, else PyTorch ops."""
    gate = pooled = code = None
    compiled = drs_kernel.usable(x)  # then r, in x's layout, is usable too
    if compiled:
        r = x if inplace else torch.empty_like(x)
        peak = drs_kernel.relu_max(x, r)
    else:
        r = x.relu_() if inplace else torch.relu(x)
        peak = r.amax(dim=(2, 3))
    if weight is None:
        threshold = delta * peak
    else:
        pooled = r.mean(dim=(2, 3))
        gate = torch.sigmoid(F.linear(pooled, weight))
        threshold = peak * gate
    if compiled:
        if with_code:
            code = torch.empty(r.shape, dtype=torch.uint8, device=r.device)
        drs_kernel.clip(r, threshold, peak, code)
        return r, code, peak, gate, pooled
    threshold, peak4 = threshold[:, :, None, None], peak[:, :, None, None]
    if with_code:
        code = torch.gt(r, threshold).view(torch.uint8)  # bool -> uint8 without a copy
        code.add_(torch.eq(r, peak4).view(torch.uint8), alpha=PEAK)
        code.add_(torch.eq(r, threshold).view(torch.uint8), alpha=TIE)
        code.add_(torch.gt(r, 0).logical_not_().view(torch.uint8), alpha=DEAD)
    return r.clamp_(max=threshold), code, peak, gate, pooled  # min(r, threshold), in r's memory


class _FusedDRS(torch.autograd.Function):
    """``min(relu(x), g * max_hw(relu(x)))`` with ``g = sigmoid(mean_hw(relu(x)) @ weight.T)`` (learnable) or
    ``g = delta`` (``weight`` None)."""

    @staticmethod
    def forward(ctx, x, weight, delta, inplace):
        y, code, peak, gate, pooled = _drs_forward(x, weight, delta, inplace, with_code=True)
        if inplace:
            ctx.mark_dirty(x)
        ctx.delta = delta
        ctx.save_for_backward(code, peak, gate, pooled, weight)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        code, peak, gate, pooled, weight = ctx.saved_tensors
        hw = code.shape[2] * code.shape[3]
        compiled = False
        if code.is_contiguous():  # the C loops read the code and the gradient as NCHW
            contiguous = grad_y.contiguous()
            compiled = drs_kernel.usable(contiguous)
            grad_y = contiguous if compiled else grad_y
        # torch.minimum gives the smaller side the gradient and half of it to each side of a tie: the threshold
        # gets all of a clipped position's gradient and half of a tie's, relu(x) the rest.
        if compiled:
            reach, peaks = drs_kernel.grad_stats(grad_y, code)
        else:
            share = (code & CLIPPED).mul_(2).add_((code & TIE) // TIE).to(grad_y.dtype)  # 2 clipped, 1 tie
            reach = torch.einsum("bchw,bchw->bc", grad_y, share)
            peaks = (code & PEAK).bool().sum(dim=(2, 3)).to(grad_y.dtype)
        grad_threshold = reach * 0.5
        if weight is None:
            grad_peak = grad_threshold * ctx.delta
            grad_weight = uniform = None
        else:
            grad_peak = grad_threshold * gate
            grad_z = grad_threshold * peak * gate * (1 - gate)  # through the sigmoid
            grad_weight = grad_z.t() @ pooled
            uniform = (grad_z @ weight) / hw  # through the mean: the same for every position of a channel
        at_peak = grad_peak / peaks.clamp_min(1)  # torch.amax shares the gradient equally between the maxima
        if compiled:
            return drs_kernel.grad_input(grad_y, code, uniform, at_peak), grad_weight, None, None
        grad_r = share.mul_(-0.5).add_(1).mul_(grad_y)
        if uniform is not None:
            grad_r.add_(uniform[:, :, None, None])
        grad_r.add_((code & PEAK).bool() * at_peak[:, :, None, None])
        return grad_r.masked_fill_((code & DEAD).bool(), 0), grad_weight, None, None  # relu: zero unless r > 0


def drs_fused(x, weight=None, delta=None, inplace=False):
    """The fused DRS activation: learnable with ``weight`` (C, C), fixed with ``delta``. ``inplace`` reuses
    ``x``'s memory (the conv output before it, which nothing else needs). Without gradients (inference) the
    same loops run without saving anything; under autocast (mixed dtypes) the reference ops run."""
    if torch.is_autocast_enabled(x.device.type):
        return drs_reference(x, weight, delta)
    if not torch.is_grad_enabled() or not (x.requires_grad or (weight is not None and weight.requires_grad)):
        return _drs_forward(x, weight, delta, inplace, with_code=False)[0]
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

    def gate(self, x):
        """The suppression ratio as :meth:`LearnableDRS.gate` gives it: ``delta`` for every image and channel."""
        return x.new_full((x.shape[0], x.shape[1], 1, 1), self.delta)

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


class SuppressionMonitor:
    """Measures, per DRS layer of ``model``, how hard it suppresses: the mean ratio ``g`` (the learned gate or
    the fixed delta, over images and channels) and the share of positive activations above ``g`` times their
    channel's peak, i.e. clipped. Use as a context manager around forward passes; ``results()`` lists the
    layers in network order. Reads each layer's input before the (in-place) layer runs."""

    def __init__(self, model):
        self.layers = [(name, m) for name, m in model.named_modules() if isinstance(m, (LearnableDRS, FixedDRS))]
        self.sums = {name: [0.0, 0, 0, 0] for name, _ in self.layers}  # ratio sum, ratio count, clipped, positive
        self.handles = []

    def _record(self, name, module, x):
        with torch.no_grad():
            r = x.detach().relu()
            peak = r.amax(dim=(2, 3), keepdim=True)
            ratio = module.gate(r)
            total = self.sums[name]
            total[0] += float(ratio.sum())
            total[1] += ratio.numel()
            total[2] += int((r > ratio * peak).sum())
            total[3] += int((r > 0).sum())

    def __enter__(self):
        for name, module in self.layers:
            hook = lambda m, inputs, name=name: self._record(name, m, inputs[0])
            self.handles.append(module.register_forward_pre_hook(hook))
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def results(self):
        return [{"layer": name, "ratio": ratio / max(count, 1), "clipped": clipped / max(positive, 1)}
                for name, (ratio, count, clipped, positive) in self.sums.items()]
