"""Joint transforms: shapes, masks moving with the image, photometric jitter leaving labels alone, hue."""

import numpy as np
import pytest
import torch
from PIL import Image

from utils.wsss.transforms import (
    ColorJitter,
    RandomCrop,
    RandomHorizontalFlip,
    adjust_hue,
    classifier_train_transform,
    eval_transform,
)


def sample(width=150, height=100):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    label = np.zeros((height, width), dtype=np.uint8)
    label[10:40, 20:70] = 7
    label[60:, :30] = 255
    return {"image": image, "label": Image.fromarray(label, mode="L"),
            "saliency": Image.fromarray((label > 0).astype(np.uint8) * 200, mode="L")}


def test_train_transform_shapes_and_label_values_untouched():
    torch.manual_seed(0)
    out = classifier_train_transform(input_size=128, crop_size=112)(sample())
    assert out["image"].shape == (3, 112, 112) and out["image"].dtype == torch.float32
    assert out["label"].shape == (112, 112) and out["label"].dtype == torch.int64
    assert set(out["label"].unique().tolist()) <= {0, 7, 255}


def test_test_transform_keeps_masks_at_original_size_in_test_mode():
    out = eval_transform(320, resize_masks=False)(sample())
    assert out["image"].shape == (3, 320, 320)
    assert out["label"].shape == (100, 150)
    valid = eval_transform(320, resize_masks=True)(sample())
    assert valid["label"].shape == (320, 320)
    assert set(valid["label"].unique().tolist()) == {0, 7, 255}  # nearest: no new values


def test_color_jitter_changes_image_only():
    torch.manual_seed(1)
    before = sample()
    label = np.array(before["label"])
    out = ColorJitter(0.3, 0.3, 0.3, 0.1)(dict(before))
    assert np.array_equal(np.array(out["label"]), label)
    assert not np.array_equal(np.array(out["image"]), np.array(sample()["image"]))


def test_flip_and_crop_move_masks_with_the_image():
    base = sample()
    marker = np.array(base["image"])
    marker[10:40, 20:70] = (255, 0, 0)
    base["image"] = Image.fromarray(marker)
    torch.manual_seed(3)
    out = RandomCrop(64)(RandomHorizontalFlip(p=1.0)(base))
    image, label = np.array(out["image"]), np.array(out["label"])
    red = (image == (255, 0, 0)).all(axis=2)
    assert np.array_equal(red, label == 7)


@pytest.mark.parametrize("shift, delta", [(0.1, 26), (-0.1, 256 - 26), (0.0, 0)])
def test_hue_shift_wraps_modulo_256(shift, delta):
    hsv = np.zeros((4, 4, 3), dtype=np.uint8)
    hsv[..., 0] = np.arange(16).reshape(4, 4) * 16
    hsv[..., 1:] = 255
    image = Image.fromarray(hsv, mode="HSV").convert("RGB")
    hue_before = np.asarray(image.convert("HSV"))[..., 0].astype(int)
    hue_after = np.asarray(adjust_hue(image, shift).convert("HSV"))[..., 0].astype(int)
    # PIL's RGB<->HSV round trip is lossy by a unit or two
    diff = (hue_after - hue_before - delta) % 256
    assert np.all((diff <= 2) | (diff >= 254))


def test_crop_larger_than_image_is_an_error():
    with pytest.raises(ValueError, match="cannot crop"):
        RandomCrop(500)(sample())
