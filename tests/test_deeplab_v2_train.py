"""DeepLab-V2 training: COCO init, frozen BN, the lr staircase (fixture H), augmentation padding, DDP."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from models.deeplab_v2 import deeplab_v2_msc
from tests.conftest import PARITY, REPO, run_cli
from utils import checkpoints
from utils.seg.data import CaffeTrainTransform
from utils.seg.training import parameter_groups, poly_lr, segmentation_loss

TINY = ["--set", "model.n_blocks=[1,1,1,1]", "--set", "model.width=0.125", "--set", "train.batch_size=2",
        "--set", "data.num_workers=0", "--set", "data.crop_size=65", "--no-progress",
        "--labels", "SegmentationClassAug"]
SMALL = [*TINY, "--set", "model.init_from=null"]


def test_coco_init_fills_every_backbone_key_and_leaves_aspp(parity_weights):
    path = parity_weights("deeplabv1_coco_init")
    torch.manual_seed(0)
    model = deeplab_v2_msc()
    missing = checkpoints.load_coco_init(model.base, path)
    assert missing == [f"aspp.c{i}.{p}" for i in range(4) for p in ("bias", "weight")]
    source = torch.load(path, weights_only=True)
    own = model.base.state_dict()
    for key, value in source.items():
        if not key.startswith("fc."):
            torch.testing.assert_close(own[key], value.to(own[key].dtype))
    aspp = torch.cat([model.base.aspp.c0.weight.flatten(), model.base.aspp.c3.weight.flatten()])
    assert aspp.std().item() == pytest.approx(0.01, rel=0.05) and model.base.aspp.c1.bias.abs().max() == 0


def test_released_checkpoint_is_not_a_coco_init(parity_weights):
    with pytest.raises(checkpoints.CheckpointError, match="not a DeepLab COCO init file"):
        checkpoints.load_coco_init(deeplab_v2_msc(n_blocks=(1, 1, 1, 1), width=0.125).base,
                                   parity_weights("drs_cls_learnable"))


def test_poly_lr_staircase_matches_original():
    expected = json.loads((PARITY / "expected" / "H_lr_schedules.json").read_text())["deeplabv2_train"]
    model = deeplab_v2_msc(n_blocks=(1, 1, 1, 1), width=0.125)
    groups = parameter_groups(model, expected["base_lr"], 5e-4)
    assert [g["weight_decay"] for g in groups] == [5e-4, 5e-4, 0.0]
    for index, lrs in enumerate(expected["lr"]):
        ours = [poly_lr(g["base_lr"], index, expected["iter_max"], expected["step_size"], expected["power"])
                for g in groups]
        for a, b in zip(ours, lrs, strict=True):
            assert math.isclose(a, b, rel_tol=1e-12)


def test_groups_hold_convs_only_and_no_batchnorm():
    model = deeplab_v2_msc(n_blocks=(1, 1, 1, 1), width=0.125)
    grouped = {id(p) for g in parameter_groups(model, 1.0, 0.0) for p in g["params"]}
    bn = {id(p) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d) for p in m.parameters()}
    convs = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Conv2d)}
    assert not grouped & bn and convs <= grouped


def test_padding_uses_mean_for_the_image_and_255_for_the_label():
    mean = [104.008, 116.669, 122.675]
    image = np.full((20, 30, 3), 200.0, dtype=np.float32)
    label = np.full((20, 30), 3, dtype=np.uint8)
    torch.manual_seed(0)
    out_image, out_label = CaffeTrainTransform([1.0], 41, mean)(image, label)
    assert out_image.shape == (3, 41, 41) and out_label.shape == (41, 41)
    padded = out_label == 255
    assert padded.sum() == 41 * 41 - 20 * 30
    # the mean, after mean subtraction: the pad holds float32(mean), the subtraction uses the float64 mean
    assert out_image[:, padded].abs().max() < 1e-5
    assert torch.all(out_image[:, ~padded] == torch.tensor([200 - m for m in mean], dtype=torch.float32)[:, None])
    assert set(out_label[~padded].unique().tolist()) == {3}


def test_self_training_term_adds_to_the_plain_loss():
    torch.manual_seed(0)
    logits = [torch.randn(2, 21, 5, 5, requires_grad=True)]
    labels = torch.randint(0, 21, (2, 9, 9))
    image_labels = torch.zeros(2, 21)
    image_labels[:, [0, 3]] = 1
    plain = segmentation_loss(logits, labels, image_labels, self_training=False)
    both = segmentation_loss(logits, labels, image_labels, self_training=True)
    assert both > plain
    # the labels are resized as PIL NEAREST does (pixel centres)
    nearest = torch.stack([torch.from_numpy(np.array(Image.fromarray(x.numpy().astype(np.uint8)).resize(
        (5, 5), Image.NEAREST), dtype=np.int64)) for x in labels])
    torch.testing.assert_close(plain, torch.nn.functional.cross_entropy(logits[0], nearest, ignore_index=255))


def test_training_keeps_batchnorm_frozen_and_resumes(parity_voc, tmp_path):
    out = tmp_path / "v2"
    run_cli("DeepLab-V2-PyTorch/train.py", "--voc-root", parity_voc, "--out", out, *SMALL,
            "--set", "train.iterations=2", "--set", "train.save_every=1")
    first = torch.load(out / "checkpoint_1.pth", weights_only=True)["model"]
    final = torch.load(out / "checkpoint_final.pth", weights_only=True)
    assert final["kind"] == "deeplab_v2" and final["iteration"] == 2
    torch.manual_seed(0)
    fresh = deeplab_v2_msc(n_blocks=(1, 1, 1, 1), width=0.125).state_dict()
    for key, value in final["model"].items():
        if ".bn." in key:  # statistics and affine parameters never move
            torch.testing.assert_close(value, fresh[key])
    assert not torch.equal(final["model"]["base.aspp.c0.weight"], first["base.aspp.c0.weight"])
    result = run_cli("DeepLab-V2-PyTorch/train.py", "--voc-root", parity_voc, "--out", out, *SMALL,
                     "--set", "train.iterations=3", "--set", "train.save_every=1", "--resume", "auto")
    assert "after iteration 2" in result.stdout
    assert torch.load(out / "checkpoint_final.pth", weights_only=True)["iteration"] == 3
    model, args = checkpoints.load_deeplab_v2(out / "checkpoint_final.pth")
    assert args["n_blocks"] == [1, 1, 1, 1]


def test_missing_coco_init_says_where_to_put_it(parity_voc, tmp_path):
    result = run_cli("DeepLab-V2-PyTorch/train.py", "--voc-root", parity_voc, "--out", tmp_path / "x", *TINY,
                     "--set", f"model.init_from={tmp_path / 'nowhere.pth'}", check=False)
    assert result.returncode == 2 and "nowhere.pth not found" in result.stderr and "Traceback" not in result.stderr
    assert "python -m utils.assets fetch coco-init" in result.stderr


def test_two_process_torchrun_smoke(parity_voc, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "DeepLab-V2-PyTorch/train.py", "--voc-root", str(parity_voc), "--out", str(out), *SMALL,
           "--set", "train.iterations=2", "--set", "train.save_every=2"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 2 process(es)" in result.stdout
    assert torch.load(out / "checkpoint_final.pth", weights_only=True)["iteration"] == 2
