"""DeepLab-V2: Caffe-style ResNet-101 + ASPP, with the multi-scale (MSC) wrapper (original §7.4).

Module names follow the released checkpoints (``base.layer2.block1.reduce.conv.weight``, ``base.aspp.c0``),
so the COCO init file (no ``base.``) and the trained model (``base.*``) load by name.
"""

import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Module):
    """Bias-free conv + BatchNorm (+ ReLU): one Caffe "conv/bn/scale" unit."""

    def __init__(self, in_channels, out_channels, kernel, stride, padding, dilation=1, relu=True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5)
        self.relu = relu

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.relu(x) if self.relu else x


class Bottleneck(nn.Module):
    """1x1 reduce (carries the stride, Caffe style) → 3x3 (dilated) → 1x1 increase, plus the shortcut."""

    def __init__(self, in_channels, out_channels, stride, dilation, projection):
        super().__init__()
        mid = out_channels // 4
        self.reduce = ConvBN(in_channels, mid, 1, stride, 0)
        self.conv3x3 = ConvBN(mid, mid, 3, 1, dilation, dilation)
        self.increase = ConvBN(mid, out_channels, 1, 1, 0, relu=False)
        self.shortcut = ConvBN(in_channels, out_channels, 1, stride, 0, relu=False) if projection else None

    def forward(self, x):
        residual = self.shortcut(x) if self.shortcut is not None else x
        return F.relu(self.increase(self.conv3x3(self.reduce(x))) + residual)


class ResLayer(nn.Sequential):
    def __init__(self, n_blocks, in_channels, out_channels, stride, dilation):
        super().__init__()
        for index in range(n_blocks):
            self.add_module(f"block{index + 1}", Bottleneck(
                in_channels if index == 0 else out_channels, out_channels,
                stride if index == 0 else 1, dilation, projection=index == 0))


class Stem(nn.Sequential):
    def __init__(self, out_channels):
        super().__init__()
        self.add_module("conv1", ConvBN(3, out_channels, 7, 2, 3))
        self.add_module("pool", nn.MaxPool2d(3, 2, 1, ceil_mode=True))


class ASPP(nn.Module):
    """Four parallel 3x3 convs with rates 6/12/18/24, outputs summed (DeepLab-V2 ASPP-L)."""

    def __init__(self, in_channels, n_classes, rates):
        super().__init__()
        for index, rate in enumerate(rates):
            conv = nn.Conv2d(in_channels, n_classes, 3, 1, padding=rate, dilation=rate, bias=True)
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)
            self.add_module(f"c{index}", conv)

    def forward(self, x):
        return sum(branch(x) for branch in self.children())


class DeepLabV2(nn.Sequential):
    """ResNet (``n_blocks`` per stage; [3, 4, 23, 3] = ResNet-101) at output stride 8, then ASPP.

    ``width`` scales every channel count (1.0 = the paper's network; tests and the demo use small ones).
    """

    def __init__(self, n_classes=21, n_blocks=(3, 4, 23, 3), atrous_rates=(6, 12, 18, 24), width=1.0):
        super().__init__()
        channels = [max(4, int(round(c * width))) for c in (64, 256, 512, 1024, 2048)]
        self.add_module("layer1", Stem(channels[0]))
        self.add_module("layer2", ResLayer(n_blocks[0], channels[0], channels[1], 1, 1))
        self.add_module("layer3", ResLayer(n_blocks[1], channels[1], channels[2], 2, 1))
        self.add_module("layer4", ResLayer(n_blocks[2], channels[2], channels[3], 1, 2))
        self.add_module("layer5", ResLayer(n_blocks[3], channels[3], channels[4], 1, 4))
        self.add_module("aspp", ASPP(channels[4], n_classes, atrous_rates))


class MSC(nn.Module):
    """Multi-scale inputs: logits at scale 1 and at each of ``scales``; their element-wise max after upsampling
    the smaller ones to the scale-1 size.

    Training returns ``[logits_1, logits_s1, logits_s2, ..., max]`` with each pyramid logit at its own
    resolution (the loss resizes the labels to each size, as the original does); evaluation returns the max.
    """

    def __init__(self, base, scales=(0.5, 0.75)):
        super().__init__()
        self.base = base
        self.scales = tuple(scales)

    def forward(self, x):
        logits = self.base(x)
        size = logits.shape[-2:]
        pyramid = [self.base(F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False))
                   for s in self.scales]
        upsampled = [F.interpolate(p, size=size, mode="bilinear", align_corners=False) for p in pyramid]
        fused = torch.stack([logits, *upsampled]).amax(dim=0)
        return [logits, *pyramid, fused] if self.training else fused


def deeplab_v2_msc(n_classes=21, n_blocks=(3, 4, 23, 3), atrous_rates=(6, 12, 18, 24), width=1.0,
                   scales=(0.5, 0.75)):
    return MSC(DeepLabV2(n_classes, n_blocks, atrous_rates, width), scales)
