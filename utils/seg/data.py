"""Segmentation training data: images with (pseudo) label maps, DeepLab-V2 and V3+ augmentation (§7.3, §8.2)."""

from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from utils import voc


def subtract_mean(image, mean_bgr):
    """Float32 BGR pixels minus the config's ``mean_bgr``, computed in float64 and stored as float32: the
    original's ``image -= mean`` on a float32 image with a float64 mean, in training and evaluation alike."""
    return (image - np.asarray(mean_bgr, dtype=np.float64)).astype(np.float32)


def load_bgr(path):
    """An image as float32 BGR 0..255 (H, W, 3), as the original's ``cv2.imread``; clear errors."""
    path = Path(path)
    if not path.is_file():
        raise voc.DataError(f"missing image: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise voc.DataError(f"cannot decode image {path}")
    return image.astype(np.float32)


class CaffeTrainTransform:
    """Random scale from ``scales`` (image bilinear, label nearest; size from the label), pad bottom/right to
    ``crop`` with the mean (image) and 255 (label), random ``crop`` x ``crop`` window, horizontal flip,
    mean subtraction. Randomness from torch's generator (seeded per DataLoader worker)."""

    def __init__(self, scales, crop, mean_bgr, ignore=voc.IGNORE_LABEL):
        self.scales, self.crop, self.mean, self.ignore = list(scales), int(crop), list(mean_bgr), ignore

    def __call__(self, image, label):
        scale = self.scales[int(torch.randint(len(self.scales), ()))]
        height, width = label.shape
        size = (int(height * scale), int(width * scale))
        image, label = resize_pair(image, label, size)
        pad_h, pad_w = max(self.crop - size[0], 0), max(self.crop - size[1], 0)
        if pad_h or pad_w:
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=self.mean)
            label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=self.ignore)
        image, label = random_crop_flip(image, label, self.crop)
        image = subtract_mean(image, self.mean).transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(label.astype(np.int64))


def random_crop_flip(image, label, crop):
    """The same random ``crop`` x ``crop`` window of an (H, W, C) image and its (H, W) label, then a horizontal
    flip with probability 0.5 (both already at least ``crop`` in each side)."""
    height, width = label.shape
    top = int(torch.randint(height - crop + 1, ()))
    left = int(torch.randint(width - crop + 1, ()))
    image, label = image[top:top + crop, left:left + crop], label[top:top + crop, left:left + crop]
    if torch.rand(()) < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    return image, label


def resize_pair(image, label, size):
    """Image bilinear, label nearest, to ``size`` = (H, W)."""
    image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    label = np.asarray(Image.fromarray(label.astype(np.uint8)).resize((size[1], size[0]), Image.NEAREST))
    return image, label


class ImageNetTrainTransform:
    """DeepLab-V3+ (original §8.2): scale by s ~ U(``scale_range``), pad every side to at least ``crop``
    (image with 0, label with **255**: the original padded the label with 0, i.e. background), random crop,
    flip, RGB in [0, 1] normalised with the ImageNet mean and std."""

    def __init__(self, scale_range, crop, ignore=voc.IGNORE_LABEL):
        from utils.wsss.transforms import IMAGENET_MEAN, IMAGENET_STD

        self.scale_range, self.crop, self.ignore = tuple(scale_range), int(crop), ignore
        self.mean, self.std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)

    def __call__(self, image, label):
        low, high = self.scale_range
        scale = low + (high - low) * float(torch.rand(()))
        height, width = label.shape
        image, label = resize_pair(image, label, (int(height * scale), int(width * scale)))
        pad_h, pad_w = max(self.crop - label.shape[0], 0), max(self.crop - label.shape[1], 0)
        if pad_h or pad_w:
            top, left = pad_h // 2, pad_w // 2  # centred, like the original's symmetric padding
            image = cv2.copyMakeBorder(image, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT, value=0)
            label = cv2.copyMakeBorder(label, top, pad_h - top, left, pad_w - left, cv2.BORDER_CONSTANT,
                                       value=self.ignore)
        image, label = random_crop_flip(image, label, self.crop)
        rgb = (image[..., ::-1] / 255.0 - self.mean) / self.std  # the loader gives BGR 0..255
        return (torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32)),
                torch.from_numpy(label.astype(np.int64)))


class SegmentationTrainSet:
    """Images of a list with the label maps of ``label_dir`` (pseudo labels) and 21-d image labels
    (background always present), for the segmentation networks."""

    def __init__(self, voc_root, entries, label_dir, transform):
        self.root = voc.check_voc_root(voc_root)
        self.label_dir = Path(label_dir) if Path(label_dir).is_absolute() else self.root / label_dir
        if not self.label_dir.is_dir():
            raise voc.DataError(f"label folder {self.label_dir} does not exist (run make_pseudo_labels.py)")
        self.entries, self.transform = list(entries), transform

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        image_id, classes = self.entries[index]
        image = load_bgr(voc.image_path(self.root, image_id))
        label = voc.load_label(self.label_dir / f"{image_id}.png")  # fails loudly, never a dummy (original §12.11)
        if label.shape != image.shape[:2]:
            raise voc.DataError(f"label {self.label_dir / image_id}.png is {label.shape}, image is {image.shape[:2]}")
        image, label = self.transform(image, label)
        image_labels = torch.zeros(voc.NUM_CLASSES + 1)
        image_labels[0] = 1.0
        image_labels[[c + 1 for c in classes]] = 1.0
        return {"image": image, "label": label, "classes": image_labels, "id": image_id}
