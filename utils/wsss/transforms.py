"""Joint transforms over a sample dict (original §2.3, §4.2).

A sample is a dict: ``"image"`` (PIL RGB) plus optional masks that must move with it -- ``"label"``,
``"saliency"``, ``"parts"`` (PIL single-channel images, resized NEAREST) -- and ``"maps"`` (a float tensor of
class maps, already at the working size). Each transform touches the keys it knows and passes the rest on.
Randomness comes from torch's generator, which DataLoader seeds per worker.
"""


import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MASK_KEYS = ("label", "saliency", "parts")


class Compose:
    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, sample):
        for transform in self.transforms:
            sample = transform(sample)
        return sample

    def __repr__(self):
        return "Compose(" + ", ".join(type(t).__name__ for t in self.transforms) + ")"


class SquashResize:
    """Resize to a square ``size`` x ``size`` ignoring the aspect ratio, as the original does everywhere in
    stages 1-3. Image bilinear (PIL), masks nearest. ``masks=False`` leaves masks at their original size."""

    def __init__(self, size, masks=True):
        self.size = int(size)
        self.masks = masks

    def __call__(self, sample):
        sample["image"] = sample["image"].resize((self.size, self.size), Image.BILINEAR)
        if self.masks:
            for key in MASK_KEYS:
                if key in sample:
                    sample[key] = sample[key].resize((self.size, self.size), Image.NEAREST)
        return sample


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, sample):
        if torch.rand(()) < self.p:
            sample["image"] = TF.hflip(sample["image"])
            for key in MASK_KEYS:
                if key in sample:
                    sample[key] = TF.hflip(sample[key])
            if "maps" in sample:
                sample["maps"] = sample["maps"].flip(-1)
        return sample


def adjust_hue(image, hue_shift):
    """Shift the hue of a PIL RGB image by ``hue_shift`` in [-0.5, 0.5] of a turn, modulo 256 in PIL's uint8
    HSV hue channel (the original's intent; its ``np.uint8(negative)`` crashes on NumPy 2)."""
    if not -0.5 <= hue_shift <= 0.5:
        raise ValueError(f"hue shift {hue_shift} outside [-0.5, 0.5]")
    h, s, v = image.convert("HSV").split()
    shifted = (np.asarray(h, dtype=np.int64) + int(round(hue_shift * 255))) % 256
    h = Image.fromarray(shifted.astype(np.uint8), mode="L")
    return Image.merge("HSV", (h, s, v)).convert("RGB")


class ColorJitter:
    """Brightness, contrast and saturation factors from [1-x, 1+x], a hue shift from [-h, h], applied in a
    random order to the image only (masks and maps are untouched)."""

    def __init__(self, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1):
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue

    @staticmethod
    def _uniform(low, high):
        return float(low + (high - low) * torch.rand(()))

    def __call__(self, sample):
        ops = []
        if self.brightness:
            f = self._uniform(1 - self.brightness, 1 + self.brightness)
            ops.append(lambda im: TF.adjust_brightness(im, f))
        if self.contrast:
            c = self._uniform(1 - self.contrast, 1 + self.contrast)
            ops.append(lambda im: TF.adjust_contrast(im, c))
        if self.saturation:
            s = self._uniform(1 - self.saturation, 1 + self.saturation)
            ops.append(lambda im: TF.adjust_saturation(im, s))
        if self.hue:
            h = self._uniform(-self.hue, self.hue)
            ops.append(lambda im: adjust_hue(im, h))
        image = sample["image"]
        for index in torch.randperm(len(ops)).tolist():
            image = ops[index](image)
        sample["image"] = image
        return sample


class RandomCrop:
    """A uniformly random ``size`` x ``size`` window, the same for the image, masks and maps (no padding)."""

    def __init__(self, size):
        self.size = int(size)

    def __call__(self, sample):
        width, height = sample["image"].size
        if width < self.size or height < self.size:
            raise ValueError(f"cannot crop {self.size} from an image of {width}x{height}")
        top = int(torch.randint(0, height - self.size + 1, ()))
        left = int(torch.randint(0, width - self.size + 1, ()))
        box = (left, top, left + self.size, top + self.size)
        sample["image"] = sample["image"].crop(box)
        for key in MASK_KEYS:
            if key in sample:
                sample[key] = sample[key].crop(box)
        if "maps" in sample:
            sample["maps"] = sample["maps"][..., top:top + self.size, left:left + self.size]
        return sample


class ToTensor:
    """Image to a normalised float tensor (C, H, W); masks to int64 tensors (H, W)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean, self.std = mean, std

    def __call__(self, sample):
        sample["image"] = TF.normalize(TF.to_tensor(sample["image"]), self.mean, self.std)
        for key in MASK_KEYS:
            if key in sample:
                sample[key] = torch.from_numpy(np.array(sample[key], dtype=np.int64))
        return sample


def classifier_train_transform(input_size=384, crop_size=320, jitter=(0.3, 0.3, 0.3, 0.1)):
    """Stage-1 training (original §2.3): squash, flip, colour jitter, random crop, normalise."""
    return Compose([
        SquashResize(input_size),
        RandomHorizontalFlip(),
        ColorJitter(*jitter),
        RandomCrop(crop_size),
        ToTensor(),
    ])


def refine_train_transform(size=320, jitter=(0.3, 0.3, 0.3, 0.1)):
    """Stage-2 training (original §4.2): squash (masks nearest; the stored maps are already at ``size``),
    colour jitter, flip of image, masks and maps together, normalise. The original's RandomCrop(320) after
    the squash to 320 is a no-op and is left out."""
    return Compose([SquashResize(size), ColorJitter(*jitter), RandomHorizontalFlip(), ToTensor()])


def eval_transform(size=320, resize_masks=True):
    """Evaluation: image squashed to ``size``; masks resized too ("valid" mode) or kept ("test" mode)."""
    return Compose([SquashResize(size, masks=resize_masks), ToTensor()])
