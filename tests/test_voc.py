"""The VOC data layer: list formats, list derivation, datasets and clear errors on bad input."""

import numpy as np
import pytest
from PIL import Image

from utils import voc
from utils.wsss.transforms import eval_transform


def test_read_list_original_format_and_plain_ids(parity_voc):
    entries = voc.read_list(parity_voc / "lists" / "train_aug_cls.txt")
    assert entries[0] == ("pv01_astronaut", [0, 14]) and len(entries) == 6
    derived = voc.read_list(parity_voc / "ImageSets" / "Segmentation" / "val.txt", voc_root=parity_voc)
    assert derived == [("pv03_chelsea", [7]), ("pv05_motorbike", [8, 13])]


def test_derive_lists_reproduces_the_original_lists(parity_voc, tmp_path):
    (parity_voc / "ImageSets" / "Segmentation" / "train.txt").write_text(
        "\n".join(i for i, _ in voc.read_list(parity_voc / "lists" / "train_cls.txt")) + "\n")
    written = voc.derive_cls_lists(parity_voc, tmp_path)
    # train_aug = every SegmentationClassAug id not in val
    assert [i for i, _ in voc.read_list(written["train_aug_cls"])] == [
        "pv01_astronaut", "pv02_camera", "pv04_coffee", "pv06_rocket"]
    for name in ("train_cls", "val_cls"):
        assert written[name].read_text() == (parity_voc / "lists" / f"{name}.txt").read_text()


def test_unknown_class_id_names_file_and_line(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a 1 2 \nb 20 \n")
    with pytest.raises(voc.DataError, match=r"list.txt:2: unknown class id 20 for b"):
        voc.read_list(path)


def test_missing_voc_folder_is_a_clear_error(tmp_path):
    with pytest.raises(voc.DataError, match="does not exist"):
        voc.VOCDataset(tmp_path / "nowhere", [("x", [0])], eval_transform(32))
    (tmp_path / "VOC2012" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(voc.DataError, match="has no saliency_map/ folder"):
        voc.VOCDataset(tmp_path / "VOC2012", [("x", [0])], eval_transform(32), masks=("saliency",))


def test_missing_image_names_the_file(parity_voc):
    dataset = voc.VOCDataset(parity_voc, [("nope", [0])], eval_transform(32))
    with pytest.raises(voc.DataError, match=r"missing image: .*JPEGImages/nope.jpg"):
        dataset[0]


def test_corrupt_jpeg_names_the_file(parity_voc):
    path = parity_voc / "JPEGImages" / "pv02_camera.jpg"
    path.write_bytes(path.read_bytes()[:200])
    dataset = voc.VOCDataset(parity_voc, [("pv02_camera", [14])], eval_transform(32))
    with pytest.raises(voc.DataError, match=r"cannot decode image .*pv02_camera.jpg"):
        dataset[0]


def test_three_channel_saliency_names_the_file(parity_voc):
    path = parity_voc / "saliency_map" / "pv03_chelsea.png"
    Image.open(path).convert("RGB").save(path)
    dataset = voc.VOCDataset(parity_voc, [("pv03_chelsea", [7])], eval_transform(32), masks=("saliency",))
    with pytest.raises(voc.DataError, match=r"saliency map .*pv03_chelsea.png has 3 channels"):
        dataset[0]


def test_dataset_item_and_collate_of_mixed_sizes(parity_voc):
    entries = voc.read_list(parity_voc / "lists" / "val_cls.txt")
    dataset = voc.VOCDataset(parity_voc, entries, eval_transform(64, resize_masks=False), masks=("label",))
    batch = voc.collate([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 64, 64)
    assert batch["classes"][1].nonzero().flatten().tolist() == [8, 13]
    assert [tuple(x.shape) for x in batch["label"]] == [(250, 333), (243, 360)]
    assert batch["size"] == [(250, 333), (243, 360)]


def test_binarise_saliency_threshold_is_strictly_above_50():
    assert voc.binarise_saliency(np.array([50, 51, 0, 255])).tolist() == [0, 1, 0, 1]
