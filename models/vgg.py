"""VGG-16 "D1" backbone shared by the stage-1 classifier and the stage-2 refinement network (original §2.4).

Layout ``[64,64,M,128,128,M,256,256,256,M,512,512,512,N,512,512,512]``: the 4th pool is 3x3 stride 1 (keeps
the resolution), there is no 5th pool and conv5 is dilated by 2, so the output stride is 8. Module indices
inside ``features`` are torchvision's ``vgg16().features`` indices, so ImageNet weights load by name; the
activation after each conv sits at the odd index right after it (ReLU, or DRS in stage 1).
"""

from torch import nn

from models.drs import make_activation

D1_CONFIG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "N", 512, 512, 512)
CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
POOL_INDICES = (4, 9, 16, 23)
# The original names each conv twice: "features.N" and "layer{block}_conv{k}" (original §2.9).
BLOCK_NAMES = tuple(
    f"layer{block}_conv{k}" for block, count in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3)) for k in range(1, count + 1)
)
IMAGENET_VGG16_FILE = "vgg16-397923af.pth"


def scaled(channels, width):
    return max(1, int(round(channels * width)))


class VGG16D1(nn.Module):
    """The D1 feature extractor: ``features`` (13 convs, 4 pools); ``out_channels`` = 512 x width.

    ``batch_norm`` (not in the paper) puts a BatchNorm after every conv, as ``features.N.0`` (conv) and
    ``features.N.1`` (BN). Only the demo's ImageNet stand-in uses it, to pre-train a narrow network from scratch
    quickly; :func:`fold_batch_norm` turns such weights into the plain network's.
    """

    def __init__(self, width=1.0, drs=None, batch_norm=False):
        super().__init__()
        layers = []
        in_channels = 3
        conv_count = 0
        for item in D1_CONFIG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            elif item == "N":
                layers.append(nn.MaxPool2d(kernel_size=3, stride=1, padding=1))
            else:
                out_channels = scaled(item, width)
                dilation = 2 if conv_count >= 10 else 1  # conv5_1..3
                conv = nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation)
                layers.append(nn.Sequential(conv, nn.BatchNorm2d(out_channels)) if batch_norm else conv)
                layers.append(make_activation(out_channels, drs))
                in_channels = out_channels
                conv_count += 1
        self.features = nn.Sequential(*layers)
        self.out_channels = in_channels
        self.batch_norm = batch_norm
        # torchvision's VGG init. The original keeps PyTorch's default init here, which only ImageNet weights
        # overwrite; trained from scratch (the demo) that default shrinks activations layer by layer.
        for conv in self.convs():
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, x):
        return self.features(x)

    def convs(self):
        return [self.features[i][0] if isinstance(self.features[i], nn.Sequential) else self.features[i]
                for i in CONV_INDICES]

    def load_imagenet(self, path=None, progress=True):
        """Copy torchvision's ImageNet VGG-16 conv weights into ``features`` (the classifier part is ignored).

        ``path``: a local ``vgg16-397923af.pth``; default: torchvision's weights API (torch hub cache).
        Offline with no cached file this fails with one line saying where to put it.
        """
        import torch

        if path is None:
            from torchvision.models import VGG16_Weights

            weights = VGG16_Weights.IMAGENET1K_V1
            try:
                state = weights.get_state_dict(progress=progress)
            except Exception as error:  # URLError, SSL errors, ... all mean "not available offline"
                hub_dir = torch.hub.get_dir()
                raise RuntimeError(
                    f"ImageNet VGG-16 weights unavailable ({type(error).__name__}): `python -m utils.assets fetch "
                    f"vgg16-imagenet` (or put {IMAGENET_VGG16_FILE} in {hub_dir}/checkpoints/), or pass "
                    "model.pretrained_path, or set model.pretrained: false"
                ) from None
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        wanted = {k: v for k, v in state.items() if k.startswith("features.")}
        own = self.state_dict()
        for key, value in wanted.items():
            if key not in own or own[key].shape != value.shape:
                raise RuntimeError(
                    f"ImageNet weight {key} {tuple(value.shape)} does not fit this backbone "
                    f"({tuple(own[key].shape) if key in own else 'missing'}); pretraining needs width 1.0"
                )
        missing = [k for k in own if k not in wanted and "fc." not in k]
        if missing:
            raise RuntimeError(f"ImageNet state dict lacks {missing[:3]}...")
        self.load_state_dict(wanted, strict=False)


def fold_batch_norm(state, prefix="backbone.features."):
    """A state dict of a ``batch_norm`` backbone rewritten for the plain one: each BN (in eval mode) is folded
    into the conv before it, ``w' = w * s`` and ``b' = (b - mean) * s + beta`` with ``s = gamma / sqrt(var + eps)``,
    so the plain network computes what the BN network computed at evaluation. Other keys pass unchanged."""
    import torch

    folded = [i for i in CONV_INDICES if f"{prefix}{i}.0.weight" in state]
    pairs = tuple(f"{prefix}{i}.{j}." for i in folded for j in (0, 1))
    out = {k: v for k, v in state.items() if not k.startswith(pairs)}
    for index in folded:
        conv, bn = f"{prefix}{index}.0.", f"{prefix}{index}.1."
        scale = state[bn + "weight"] / torch.sqrt(state[bn + "running_var"] + 1e-5)
        out[f"{prefix}{index}.weight"] = state[conv + "weight"] * scale[:, None, None, None]
        out[f"{prefix}{index}.bias"] = (state[conv + "bias"] - state[bn + "running_mean"]) * scale + state[bn + "bias"]
    return out
