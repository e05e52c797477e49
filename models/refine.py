"""Stage-2 refinement network (original §4.1): the VGG-16 D1 backbone with plain ReLUs, three 3x3 convs
and a 1x1 conv to the classes. It regresses the stage-1 localization maps; the output is unbounded (no
final activation)."""

import torch.nn.functional as F
from torch import nn

from models.vgg import VGG16D1, scaled


class RefineNet(nn.Module):
    def __init__(self, num_classes=20, width=1.0, pretrained=False, pretrained_path=None):
        super().__init__()
        self.backbone = VGG16D1(width=width, drs=None)
        head = scaled(512, width)
        channels = self.backbone.out_channels
        for k in (1, 2, 3):
            setattr(self, f"extra_conv{k}", nn.Conv2d(channels, head, 3, padding=1))
            channels = head
        self.extra_conv4 = nn.Conv2d(head, num_classes, 1)
        self.num_classes = num_classes
        for k in (1, 2, 3, 4):
            conv = getattr(self, f"extra_conv{k}")
            nn.init.normal_(conv.weight, 0.0, 0.01)
            nn.init.zeros_(conv.bias)
        if pretrained or pretrained_path:
            self.backbone.load_imagenet(pretrained_path)

    def score_maps(self, x):
        """The raw (B, C, H/8, W/8) regression output."""
        y = self.backbone(x)
        for k in (1, 2, 3):
            y = F.relu(getattr(self, f"extra_conv{k}")(y))
        return self.extra_conv4(y)

    def forward(self, x, size=None, classes=None):
        """Refined maps (B, C, H, W), bilinearly (align_corners=True) upsampled to ``size`` (default: the
        input's), multiplied by the image's ``classes`` (B, C) when given (inference, not training)."""
        y = F.interpolate(self.score_maps(x), size=tuple(size or x.shape[-2:]), mode="bilinear", align_corners=True)
        if classes is not None:
            y = y * classes[:, :, None, None]
        return y
