"""Discriminative Region Suppression (original §2.5).

DRS replaces the ReLU after a conv: ``y = min(relu(x), g * max_hw(relu(x)))``. The per-image, per-channel
spatial max is the "max extractor"; ``g`` is the "suppression controller", either a learned gate
``sigmoid(W @ GAP(relu(x)))`` or a fixed scalar delta. Activations above ``g`` times the channel's peak are
clipped, so the strongest (most discriminative) responses cannot dominate and attention spreads.
"""

import torch
from torch import nn


class LearnableDRS(nn.Module):
    """DRS with a learned per-image, per-channel suppression gate in (0, 1).

    ``fc`` is a bias-free ``Linear(C, C)`` followed by a sigmoid; its weight is the module's only
    parameter (key ``fc.0.weight``, as in the released checkpoints).
    """

    def __init__(self, channels):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(channels, channels, bias=False), nn.Sigmoid())

    def gate(self, x):
        """``g`` of shape (B, C, 1, 1) for already-ReLU'd features ``x``."""
        return self.fc(x.mean(dim=(2, 3)))[:, :, None, None]

    def forward(self, x):
        x = torch.relu(x)
        peak = x.amax(dim=(2, 3), keepdim=True)
        return torch.minimum(x, peak * self.gate(x))


class FixedDRS(nn.Module):
    """DRS with a fixed suppression ratio ``delta`` in (0, 1]: ``min(relu(x), delta * max_hw(relu(x)))``."""

    def __init__(self, delta):
        super().__init__()
        if not 0.0 < delta <= 1.0:
            raise ValueError(f"fixed DRS needs 0 < delta <= 1, got {delta}")
        self.delta = float(delta)

    def forward(self, x):
        x = torch.relu(x)
        return torch.minimum(x, self.delta * x.amax(dim=(2, 3), keepdim=True))

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
