"""Stages 2 and 3: refinement target, pseudo-label rules, parity fixture D, resume and bad inputs."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import PARITY, run_cli
from utils import checkpoints, voc
from utils.io import save_label_png, voc_palette
from utils.wsss.cam import multiscale_maps
from utils.wsss.pseudo_labels import pseudo_label, threshold_label, top_class_target
from utils.wsss.transforms import eval_transform

EXPECTED = PARITY / "expected"


def test_top_class_target_keeps_ties_and_zeroes_absent_classes():
    maps = torch.zeros(1, 3, 1, 4)
    maps[0, :, 0, 0] = torch.tensor([0.2, 0.7, 0.1])  # one winner
    maps[0, :, 0, 1] = torch.tensor([0.5, 0.5, 0.1])  # a tie keeps both
    # pixel 2: all classes absent (0) -> target 0; pixel 3: a single class
    maps[0, 2, 0, 3] = 0.3
    target = top_class_target(maps)[0, :, 0]
    assert target[:, 0].tolist() == pytest.approx([0.0, 0.7, 0.0])
    assert target[:, 1].tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert target[:, 2].tolist() == [0.0, 0.0, 0.0]
    assert target[:, 3].tolist() == pytest.approx([0.0, 0.0, 0.3])


def test_pseudo_label_rules():
    maps = torch.zeros(20, 1, 6)
    salient = torch.tensor([[True, True, True, False, False, True]])
    maps[3, 0, 0] = 0.5                      # salient, class 3 above alpha -> 4
    maps[3, 0, 1] = 0.1                      # salient, below alpha -> background -> ignored
    maps[[1, 2, 5], 0, 2] = 0.95             # three classes above 0.9 -> ignored
    maps[7, 0, 3] = 0.99                     # not salient: background 1.0 wins (needs > 1)
    maps[7, 0, 4] = 1.2                      # not salient but > 1 -> 8
    maps[[1, 2], 0, 5] = 0.95                # two classes above 0.9 is fine: the lower index wins the tie
    label = pseudo_label(maps, salient)[0].tolist()
    assert label == [4, 255, 255, 0, 8, 2]


def test_threshold_label_without_saliency():
    maps = torch.zeros(20, 1, 3)
    maps[4, 0, 0], maps[4, 0, 1] = 0.6, 0.2
    assert threshold_label(maps, 0.3)[0].tolist() == [5, 0, 0]


def test_refined_maps_match_original(parity_weights, parity_voc):
    model, _ = checkpoints.load_refiner(parity_weights("drs_refine"))
    expected = np.load(EXPECTED / "D_refined_maps_s0_subset.npz")
    entries = [e for e in voc.read_list(parity_voc / "lists" / "train_aug_cls.txt") if e[0] in expected.files]
    dataset = voc.VOCDataset(parity_voc, entries, eval_transform(320, resize_masks=False))
    batch = voc.collate([dataset[i] for i in range(len(dataset))])
    maps = multiscale_maps(model.eval().score_maps, batch["image"], batch["classes"], batch["size"])
    for image_id, ours in zip(batch["id"], maps, strict=True):
        np.testing.assert_allclose(ours.numpy(), expected[image_id], atol=1e-4)


def pseudo_label_args(voc_root, checkpoint, out, *extra):
    return ["make_pseudo_labels.py", "--voc-root", voc_root, "--list", voc_root / "lists" / "train_aug_cls.txt",
            "--checkpoint", checkpoint, "--out", out, "--num-workers", "0", *extra]


def test_pseudo_label_cli_matches_original_and_resumes(parity_weights, parity_voc, tmp_path):
    out = tmp_path / "labels"
    args = pseudo_label_args(parity_voc, parity_weights("drs_refine"), out)
    run_cli(*args)
    expected_dir = EXPECTED / "D_pseudo_labels_s0"
    names = sorted(p.name for p in expected_dir.glob("*.png"))
    assert sorted(p.name for p in out.glob("*.png")) == names
    for name in names:
        ours, theirs = Image.open(out / name), Image.open(expected_dir / name)
        assert ours.mode == "P" and ours.size == theirs.size
        assert ours.getpalette()[:63] == voc_palette()[:63]
        assert (np.array(ours) != np.array(theirs)).mean() < 0.005
        assert set(np.unique(np.array(ours))) <= set(range(21)) | {255}
    # resume: delete half, rerun -> the same set, the kept files untouched
    before = {p.name: p.read_bytes() for p in out.glob("*.png")}
    for name in names[::2]:
        (out / name).unlink()
    result = run_cli(*args)
    assert f"{len(names) - len(names[::2])} of {len(names)} already" in result.stdout
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == before


def test_bf16_labels_stay_close_to_the_original_and_are_not_mixed_with_fp32(parity_weights, parity_voc, tmp_path):
    """--precision bf16 (convolutions in bfloat16): the labels agree with the original's float32 labels on most
    pixels, and a folder written in one precision refuses to be completed in the other."""
    out = tmp_path / "labels"
    run_cli(*pseudo_label_args(parity_voc, parity_weights("drs_refine"), out, "--precision", "bf16"))
    expected_dir = EXPECTED / "D_pseudo_labels_s0"
    names = sorted(p.name for p in expected_dir.glob("*.png"))
    assert sorted(p.name for p in out.glob("*.png")) == names
    agreement = np.mean([(np.array(Image.open(out / n)) == np.array(Image.open(expected_dir / n))).mean()
                         for n in names])
    assert agreement > 0.99, agreement
    (out / names[0]).unlink()
    refused = run_cli(*pseudo_label_args(parity_voc, parity_weights("drs_refine"), out), check=False)
    assert refused.returncode == 2 and "precision" in refused.stderr


def test_bf16_localization_maps_are_close_to_fp32(parity_weights, parity_voc, tmp_path):
    maps = {}
    for precision in ("fp32", "bf16"):
        run_cli("make_localization_maps.py", "--voc-root", parity_voc, "--list",
                parity_voc / "lists" / "train_aug_cls.txt", "--checkpoint", parity_weights("drs_cls_learnable"),
                "--out", tmp_path / precision, "--size", "96", "--scales", "64", "96", "--num-workers", "0",
                "--precision", precision)
        maps[precision] = {p.name: np.load(p).astype(int) for p in sorted((tmp_path / precision).glob("*.npy"))}
    assert maps["fp32"].keys() == maps["bf16"].keys() and len(maps["fp32"]) == 6
    for name, exact in maps["fp32"].items():
        fast = maps["bf16"][name]
        assert ((exact == 0).all(axis=(1, 2)) == (fast == 0).all(axis=(1, 2))).all()  # the same classes
        assert np.abs(exact - fast).mean() < 1, (name, np.abs(exact - fast).mean())  # of 255 levels


def test_classifier_checkpoint_where_refiner_expected(parity_weights, parity_voc, tmp_path):
    result = run_cli(*pseudo_label_args(parity_voc, parity_weights("drs_cls_learnable"), tmp_path / "o"), check=False)
    assert result.returncode != 0 and "not a refinement network" in result.stderr


def test_missing_saliency_names_the_file(parity_weights, parity_voc, tmp_path):
    (parity_voc / "saliency_map" / "pv04_coffee.png").unlink()
    result = run_cli(*pseudo_label_args(parity_voc, parity_weights("drs_refine"), tmp_path / "o"), check=False)
    assert result.returncode != 0 and "missing saliency map" in result.stderr and "pv04_coffee.png" in result.stderr


def test_stage2_input_errors(parity_voc, tmp_path):
    maps_dir = tmp_path / "maps"
    maps_dir.mkdir()
    entries = [("pv03_chelsea", [7]), ("pv06_rocket", [0])]
    np.save(maps_dir / "pv03_chelsea.npy", np.zeros((20, 64, 64), np.uint8))
    dataset = voc.VOCDataset(parity_voc, entries, eval_transform(32), maps_dir=maps_dir)
    with pytest.raises(voc.DataError, match=r"pv03_chelsea.npy is \(64, 64\).*squashed to \(32, 32\)"):
        dataset[0]
    with pytest.raises(voc.DataError, match=r"missing localization map: .*pv06_rocket.npy"):
        dataset[1]
    np.save(maps_dir / "pv06_rocket.npy", np.zeros((21, 32, 32), np.uint8))
    with pytest.raises(voc.DataError, match=r"pv06_rocket.npy is uint8 \(21, 32, 32\)"):
        dataset[1]


def test_refine_training_run_resume_and_wrong_maps(parity_weights, parity_voc, tmp_path):
    maps = tmp_path / "maps"
    run_cli("make_localization_maps.py", "--voc-root", parity_voc, "--list", parity_voc / "lists" / "train_aug_cls.txt",
            "--checkpoint", parity_weights("drs_cls_learnable"), "--out", maps, "--num-workers", "0",
            "--size", "64", "--scales", "48", "64")
    args = ["train_refine.py", "--config", "configs/refine_demo.yaml", "--voc-root", parity_voc, "--no-progress",
            "--set", f"data.maps_dir={maps}", "--set", "data.size=64", "--set", "data.num_workers=0",
            "--set", "data.val_list=lists/val_cls.txt", "--set", "val.every=1"]
    out = tmp_path / "refine"
    run_cli(*args, "--out", out, "--set", "train.epochs=1")
    result = run_cli(*args, "--out", out, "--set", "train.epochs=2", "--resume", "auto")
    assert "after epoch 1" in result.stdout and "epoch 2: train_loss" in result.stdout
    state = torch.load(out / "last.pth", weights_only=True)
    assert state["kind"] == "refine" and "val_miou" in state["metrics"]
    model, margs = checkpoints.load_refiner(out / "last.pth")
    assert margs["width"] == 0.125
    with pytest.raises(checkpoints.CheckpointError, match="not a stage-1 classifier"):
        checkpoints.load_classifier(out / "last.pth")
    # maps made at another size than the training size: a clear error naming the file
    bad = run_cli(*args, "--out", tmp_path / "bad", "--set", "data.size=96", check=False)
    assert bad.returncode != 0 and "regenerate the maps" in bad.stderr


def test_pseudo_label_options_and_label_evaluation(parity_weights, parity_voc, tmp_path):
    common = ["--voc-root", parity_voc, "--list", parity_voc / "lists" / "val_cls.txt", "--num-workers", "0",
              "--size", "96", "--scales", "96"]
    from_cls = tmp_path / "cls"
    run_cli("make_pseudo_labels.py", *common, "--checkpoint", parity_weights("drs_cls_learnable"), "--stage", "cls",
            "--no-saliency", "--bg-threshold", "0.5", "--out", from_cls)
    crf = tmp_path / "crf"
    run_cli("make_pseudo_labels.py", *common, "--checkpoint", parity_weights("drs_refine"), "--crf", "--jobs", "2",
            "--out", crf)
    for folder in (from_cls, crf):
        labels = {p.stem: np.array(Image.open(p)) for p in folder.glob("*.png")}
        assert sorted(labels) == ["pv03_chelsea", "pv05_motorbike"]
        assert labels["pv03_chelsea"].shape == (250, 333)
    assert not (crf / ".raw").exists() or not any((crf / ".raw").iterdir())
    assert 255 not in np.unique(np.array(Image.open(from_cls / "pv03_chelsea.png")))  # no saliency rule, no 255
    # the CRF fills the ignored pixels: every pixel labelled, only the image's classes or background
    crf_chelsea = np.unique(np.array(Image.open(crf / "pv03_chelsea.png")))
    assert set(crf_chelsea) <= {0, 8}

    result = run_cli("evaluate_labels.py", "--voc-root", parity_voc, "--list", parity_voc / "lists" / "val_cls.txt",
                     "--labels", from_cls, "--out", tmp_path / "eval")
    assert "mIoU" in result.stdout
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert scores["coverage"] == 1.0
    assert scores["ignored"]["mean_iou"] == scores["as_wrong"]["mean_iou"]


def test_labels_with_ignore_score_lower_when_255_counts_as_wrong(parity_voc, tmp_path):
    labels = tmp_path / "labels"
    for image_id in ("pv03_chelsea", "pv05_motorbike"):
        gt = voc.load_label(parity_voc / "SegmentationClassAug" / f"{image_id}.png").astype(np.uint8)
        gt[: gt.shape[0] // 4] = 255  # a quarter of each label unassigned
        save_label_png(labels / f"{image_id}.png", gt)
    run_cli("evaluate_labels.py", "--voc-root", parity_voc, "--list", parity_voc / "lists" / "val_cls.txt",
            "--labels", labels, "--out", tmp_path / "eval")
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    assert scores["ignored"]["mean_iou"] == pytest.approx(1.0)
    assert scores["as_wrong"]["mean_iou"] < 0.95
    assert 0.7 < scores["coverage"] < 0.8
