"""DeepLab-V3+ on torchvision's ResNet-101 (original §8.2).

Module names follow the released checkpoints (``backbone.layer1.0.conv1.weight``, ``classifier.aspp.convs.0.0``,
``classifier.project``, ``classifier.classifier``), so ``{'model_state': ...}`` files load strictly.
"""

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def _stage(in_channels, planes, blocks, stride, dilation, dilate):
    """One ResNet stage of torchvision Bottlenecks, as torchvision builds it (same module names and order);
    returns (stage, out_channels, dilation after it). A dilated stage trades its stride for dilation."""
    previous_dilation = dilation
    if dilate:
        dilation, stride = dilation * stride, 1
    out_channels = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out_channels))
    layers = [Bottleneck(in_channels, planes, stride, downsample, dilation=previous_dilation)]
    layers += [Bottleneck(out_channels, planes, dilation=dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers), out_channels, dilation


class ResNetFeatures(nn.Module):
    """torchvision's bottleneck ResNet without its pooling and fc: returns (layer1, layer4) features.

    ``stem_channels`` is the stem's channel count (64 in every torchvision ResNet; stage ``i`` has
    ``stem_channels * 2**i`` bottleneck planes and 4x that many outputs); ``n_blocks`` overrides the blocks per
    stage of ``depth``. With neither, the modules, names and initialisation are torchvision's, so ImageNet
    ``weights`` (a torchvision weights name, e.g. ``"IMAGENET1K_V1"``) load strictly; the smaller networks exist
    for CPU-sized experiments and have no pretrained weights.
    """

    def __init__(self, depth=101, output_stride=16, weights=None, stem_channels=64, n_blocks=None):
        super().__init__()
        if depth not in BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(BLOCKS)}, got {depth}")
        n_blocks = tuple(n_blocks or BLOCKS[depth])
        if len(n_blocks) != 4 or min(n_blocks) < 1:
            raise ValueError(f"n_blocks must be 4 positive block counts, got {n_blocks}")
        if weights is not None and (stem_channels != 64 or n_blocks != BLOCKS[depth]):
            raise ValueError(f"ImageNet weights exist only for stem_channels 64 and blocks {BLOCKS[depth]}, not "
                             f"{stem_channels} and {n_blocks}")
        dilate = {16: (False, False, True), 8: (False, True, True)}[output_stride]
        self.conv1 = nn.Conv2d(3, stem_channels, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels, dilation = stem_channels, 1
        for index, blocks in enumerate(n_blocks):
            stage, channels, dilation = _stage(channels, stem_channels * 2 ** index, blocks, 1 if index == 0 else 2,
                                               dilation, index > 0 and dilate[index - 1])
            setattr(self, f"layer{index + 1}", stage)
        self.low_level_channels, self.out_channels = stem_channels * Bottleneck.expansion, channels
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if weights is not None:
            if isinstance(weights, str):
                weights = torchvision.models.get_model_weights(f"resnet{depth}")[weights]
            state = weights.get_state_dict(progress=True)
            self.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")}, strict=True)

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
    """ASPP on the deep features, upsampled and joined with a ``project_channels`` projection of the low-level
    features, then a 3x3 conv of ``channels`` and the classifier (the paper: 256 and 48)."""

    def __init__(self, in_channels, low_level_channels, num_classes, rates, separable=False, channels=256,
                 project_channels=48):
        super().__init__()
        self.project = nn.Sequential(*conv_bn_relu(low_level_channels, project_channels))
        self.aspp = ASPP(in_channels, rates, channels, separable)
        self.classifier = nn.Sequential(*conv_bn_relu(project_channels + channels, channels, 3, 1, separable),
                                        nn.Conv2d(channels, num_classes, 1))
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
    """Logits at the input resolution. ``weights``: torchvision ResNet weights (e.g. ``"IMAGENET1K_V1"``).

    The defaults are the paper's network. ``stem_channels`` (ResNet stem channels, 64), ``n_blocks`` (blocks per
    stage, from ``depth``), ``head_channels`` (ASPP and decoder, 256) and ``project_channels`` (low-level
    projection, 48) shrink it for CPU-sized experiments without changing a module name.
    """

    def __init__(self, num_classes=21, depth=101, output_stride=16, separable=False, weights=None, stem_channels=64,
                 head_channels=256, project_channels=48, n_blocks=None):
        super().__init__()
        rates = {16: (6, 12, 18), 8: (12, 24, 36)}[output_stride]
        self.backbone = ResNetFeatures(depth, output_stride, weights, stem_channels, n_blocks)
        self.classifier = DeepLabV3PlusHead(self.backbone.out_channels, self.backbone.low_level_channels,
                                            num_classes, rates, separable, head_channels, project_channels)

    def set_backbone_bn_momentum(self, momentum):
        """The running-statistics momentum of every backbone BatchNorm (the original trains with 0.01)."""
        for module in self.backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = momentum

    def forward(self, x):
        logits = self.classifier(*self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
