"""DeepLab-V3+ on torchvision's ResNet-101 (reference §8.2).

Module names follow the released checkpoints (``backbone.layer1.0.conv1.weight``, ``classifier.aspp.convs.0.0``,
``classifier.project``, ``classifier.classifier``), so ``{'model_state': ...}`` files load strictly.
"""

import torch
import torch.nn.functional as F
import torchvision
from torch import nn


class ResNetFeatures(nn.Module):
    """torchvision's ResNet without its pooling and fc: returns (layer1, layer4) features."""

    def __init__(self, depth=101, output_stride=16, weights=None):
        super().__init__()
        dilate = {16: [False, False, True], 8: [False, True, True]}[output_stride]
        builder = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}[depth]
        resnet = builder(weights=weights, replace_stride_with_dilation=dilate)
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"):
            setattr(self, name, getattr(resnet, name))

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        low = self.layer1(x)
        return low, self.layer4(self.layer3(self.layer2(low)))


def conv_bn_relu(in_channels, out_channels, kernel=1, dilation=1, separable=False):
    padding = 0 if kernel == 1 else dilation
    if separable and kernel > 1:
        conv = nn.Sequential(  # depthwise then pointwise
            nn.Conv2d(in_channels, in_channels, kernel, padding=padding, dilation=dilation, groups=in_channels,
                      bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False))
    else:
        conv = nn.Conv2d(in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False)
    return [conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class ImagePooling(nn.Sequential):
    def __init__(self, in_channels, out_channels):
        super().__init__(nn.AdaptiveAvgPool2d(1), *conv_bn_relu(in_channels, out_channels))

    def forward(self, x):
        return F.interpolate(super().forward(x), size=x.shape[-2:], mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    """1x1, three dilated 3x3 and an image-pooling branch of 256 channels, concatenated and projected."""

    def __init__(self, in_channels, rates, channels=256, separable=False):
        super().__init__()
        branches = [nn.Sequential(*conv_bn_relu(in_channels, channels))]
        branches += [nn.Sequential(*conv_bn_relu(in_channels, channels, 3, r, separable)) for r in rates]
        branches.append(ImagePooling(in_channels, channels))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(*conv_bn_relu(channels * len(branches), channels), nn.Dropout(0.1))

    def forward(self, x):
        return self.project(torch.cat([branch(x) for branch in self.convs], dim=1))


class DeepLabV3PlusHead(nn.Module):
    def __init__(self, in_channels, low_level_channels, num_classes, rates, separable=False):
        super().__init__()
        self.project = nn.Sequential(*conv_bn_relu(low_level_channels, 48))
        self.aspp = ASPP(in_channels, rates, separable=separable)
        self.classifier = nn.Sequential(*conv_bn_relu(48 + 256, 256, 3, 1, separable), nn.Conv2d(256, num_classes, 1))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, low, high):
        low = self.project(low)
        high = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(torch.cat([low, high], dim=1))


class DeepLabV3Plus(nn.Module):
    """Logits at the input resolution. ``weights``: torchvision ResNet weights (e.g. ``"IMAGENET1K_V1"``)."""

    def __init__(self, num_classes=21, depth=101, output_stride=16, separable=False, weights=None):
        super().__init__()
        rates = {16: (6, 12, 18), 8: (12, 24, 36)}[output_stride]
        self.backbone = ResNetFeatures(depth, output_stride, weights)
        self.classifier = DeepLabV3PlusHead(2048, 256, num_classes, rates, separable)

    def forward(self, x):
        logits = self.classifier(*self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
