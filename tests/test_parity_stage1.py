"""Parity with the original implementation: fixtures B (learnable DRS) and C (fixed delta 0.55)."""

import numpy as np
import pytest
import torch

from tests.conftest import PARITY, run_cli
from utils import checkpoints, voc
from utils.wsss.cam import normalized_cam
from utils.wsss.transforms import eval_transform

EXPECTED = PARITY / "expected"


def single_scale_outputs(model, root):
    entries = voc.read_list(root / "lists" / "train_aug_cls.txt")
    dataset = voc.VOCDataset(root, entries, eval_transform(320))
    batch = voc.collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        maps = model.eval().class_maps(batch["image"])
    return batch, maps.mean(dim=(2, 3)), normalized_cam(maps, batch["classes"], (320, 320))


@pytest.mark.parametrize("spec, fixture, delta", [
    ("drs_cls_learnable", "B_cls_learnable_s0_subset.npz", None),
    ("drs_cls_delta", "C_cls_delta055_s0_subset.npz", 0.55),
])
def test_logits_and_cam_match_original(parity_weights, parity_voc, spec, fixture, delta):
    expected = np.load(EXPECTED / fixture)
    model, _ = checkpoints.load_classifier(parity_weights(spec), delta=delta)
    batch, logits, cams = single_scale_outputs(model, parity_voc)
    assert list(batch["id"]) == [str(i) for i in expected["ids"]]
    np.testing.assert_array_equal(batch["classes"].numpy(), expected["labels"])
    np.testing.assert_allclose(logits.numpy(), expected["logits"], rtol=1e-4, atol=1e-6)
    checked = 0
    for index, image_id in enumerate(batch["id"]):
        if f"cam_{image_id}" in expected.files:
            np.testing.assert_allclose(cams[index].numpy(), expected[f"cam_{image_id}"], atol=1e-4)
            checked += 1
    assert checked >= 2


def test_localization_maps_cli_matches_original_and_resumes(parity_weights, parity_voc, tmp_path):
    out = tmp_path / "maps"
    args = ["make_localization_maps.py", "--voc-root", parity_voc, "--list", parity_voc / "lists" / "train_aug_cls.txt",
            "--checkpoint", parity_weights("drs_cls_learnable"), "--out", out, "--num-workers", "0"]
    run_cli(*args)
    expected = np.load(EXPECTED / "B_localization_maps_s0.npz")
    assert sorted(p.stem for p in out.glob("*.npy")) == sorted(expected.files)
    for image_id in expected.files:
        ours = np.load(out / f"{image_id}.npy")
        assert ours.dtype == np.uint8 and ours.shape == (20, 320, 320)
        diff = np.abs(ours.astype(int) - expected[image_id].astype(int))
        assert diff.max() <= 1
        assert (diff > 0).mean() <= 0.005

    # resume: the others are skipped (untouched), the removed one is rewritten (batch of 1: within +-1)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.npy")}
    (out / "pv01_astronaut.npy").unlink()
    result = run_cli(*args)
    assert "5 of 6 already" in result.stdout
    assert all(p.stat().st_mtime_ns == stamps[p.name] for p in out.glob("*.npy") if p.name != "pv01_astronaut.npy")
    rewritten = np.load(out / "pv01_astronaut.npy").astype(int)
    assert np.abs(rewritten - expected["pv01_astronaut"].astype(int)).max() <= 1


def test_plain_id_list_derives_labels_from_gt(parity_weights, parity_voc, tmp_path):
    out = tmp_path / "maps"
    run_cli("make_localization_maps.py", "--voc-root", parity_voc,
            "--list", parity_voc / "ImageSets" / "Segmentation" / "val.txt",
            "--checkpoint", parity_weights("drs_cls_delta"), "--delta", "0.55", "--out", out, "--num-workers", "0")
    maps = np.load(out / "pv05_motorbike.npy")
    present = [c for c in range(20) if maps[c].any()]
    assert present == [8, 13]  # chair and motorbike, from SegmentationClassAug


def test_fixed_delta_checkpoint_without_delta_is_a_clear_error(parity_weights, parity_voc, tmp_path):
    checkpoint = parity_weights("drs_cls_delta")
    result = run_cli("make_localization_maps.py", "--voc-root", parity_voc, "--list",
                     parity_voc / "lists" / "val_cls.txt", "--checkpoint", checkpoint,
                     "--out", tmp_path / "maps", check=False)
    assert result.returncode != 0
    assert "pass --delta" in result.stderr and checkpoint.name in result.stderr
