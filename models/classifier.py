"""Stage-1 classifier: VGG-16 D1 with DRS after every conv, a 3-conv head and a 1x1 class conv (original §2.4-2.6).

The 20-channel map before global average pooling is the class activation map (CAM) itself: there is no
fully-connected layer to fold in.
"""

import math

from torch import nn

from models.drs import LearnableDRS, make_activation
from models.vgg import VGG16D1, scaled


class DRSClassifier(nn.Module):
    """Multi-label classifier.

    Args:
        num_classes: foreground classes (20 for VOC).
        drs: ``"learnable"``, a fixed delta in (0, 1], or ``None`` for the plain-ReLU baseline.
        width: channel multiplier (1.0 = the paper's network; the demo uses narrow ones).
        pretrained: load torchvision's ImageNet VGG-16 into the backbone (width 1.0 only).
        pretrained_path: a local copy of the ImageNet file instead of the torch hub cache.
        batch_norm: BN after every backbone conv (the demo's pre-training stand-in only; see ``VGG16D1``).
    """

    def __init__(self, num_classes=20, drs="learnable", width=1.0, pretrained=False, pretrained_path=None,
                 batch_norm=False):
        super().__init__()
        self.backbone = VGG16D1(width=width, drs=drs, batch_norm=batch_norm)
        head = scaled(512, width)
        channels = self.backbone.out_channels
        for k in (1, 2, 3):
            setattr(self, f"extra_conv{k}", nn.Conv2d(channels, head, 3, padding=1))
            setattr(self, f"extra_relu{k}", make_activation(head, drs))
            channels = head
        self.extra_conv4 = nn.Conv2d(head, num_classes, 1)
        self.num_classes = num_classes
        self._init_head()
        if pretrained or pretrained_path:
            self.backbone.load_imagenet(pretrained_path)

    def _init_head(self):
        # Reference init: He-style N(0, sqrt(2 / (k*k*out))) for the extra convs, N(0, 0.01) for DRS gates.
        for name, module in self.named_modules():
            if name.startswith("extra_conv"):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
                nn.init.zeros_(module.bias)
            elif isinstance(module, LearnableDRS):
                nn.init.normal_(module.fc[0].weight, 0.0, 0.01)

    def class_maps(self, x):
        """The raw 20-channel score maps (B, C, H/8, W/8) before pooling."""
        x = self.backbone(x)
        for k in (1, 2, 3):
            x = getattr(self, f"extra_relu{k}")(getattr(self, f"extra_conv{k}")(x))
        return self.extra_conv4(x)

    def forward(self, x):
        """Image-level logits (B, C): global average of the class maps."""
        return self.class_maps(x).mean(dim=(2, 3))

    def parameter_groups(self, lr, multipliers=(1, 2, 10, 20)):
        """The original's four SGD groups (original §2.7): backbone weights x1, backbone biases x2,
        head weights and every DRS gate x10, head biases x20. A fifth multiplier (not in the original) moves the
        DRS gates into a group of their own."""
        groups = [[], [], [], [], []]
        for name, param in self.named_parameters():
            if ".fc." in name and len(multipliers) > 4:
                groups[4].append(param)
                continue
            in_head = name.startswith("extra_") or ".fc." in name
            is_weight = name.endswith("weight")
            groups[2 * in_head + (not is_weight)].append(param)
        if not groups[4]:
            groups.pop()
        return [{"params": params, "lr": lr * mult} for params, mult in zip(groups, multipliers)]
