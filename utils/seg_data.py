"""Segmentation training data: images with (pseudo) label maps and the DeepLab-V2 augmentation (reference §7.3)."""

from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from utils import voc


def bgr_mean(cfg_mean):
    """The config's ``{R, G, B}`` mean as a BGR float32 vector."""
    return np.array([cfg_mean["B"], cfg_mean["G"], cfg_mean["R"]], dtype=np.float32)


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
        self.scales, self.crop, self.mean, self.ignore = list(scales), int(crop), mean_bgr, ignore

    def __call__(self, image, label):
        scale = self.scales[int(torch.randint(len(self.scales), ()))]
        height, width = label.shape
        size = (int(height * scale), int(width * scale))
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
        label = np.asarray(Image.fromarray(label.astype(np.uint8)).resize((size[1], size[0]), Image.NEAREST))
        pad_h, pad_w = max(self.crop - size[0], 0), max(self.crop - size[1], 0)
        if pad_h or pad_w:
            image = cv2.copyMakeBorder(image, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=self.mean.tolist())
            label = cv2.copyMakeBorder(label, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=self.ignore)
        height, width = label.shape
        top = int(torch.randint(height - self.crop + 1, ()))
        left = int(torch.randint(width - self.crop + 1, ()))
        image = image[top:top + self.crop, left:left + self.crop]
        label = label[top:top + self.crop, left:left + self.crop]
        if torch.rand(()) < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        image = (image - self.mean).transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(label.astype(np.int64))


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
        label = voc.load_label(self.label_dir / f"{image_id}.png")  # fails loudly, never a dummy (reference §12.11)
        if label.shape != image.shape[:2]:
            raise voc.DataError(f"label {self.label_dir / image_id}.png is {label.shape}, image is {image.shape[:2]}")
        image, label = self.transform(image, label)
        image_labels = torch.zeros(voc.NUM_CLASSES + 1)
        image_labels[0] = 1.0
        image_labels[[c + 1 for c in classes]] = 1.0
        return {"image": image, "label": label, "classes": image_labels, "id": image_id}
