"""DeepLab-V3+ training: label padding with 255, AMP skipped on the CPU, synchronised BN under torchrun."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import torch

from models.deeplab_v3plus import DeepLabV3Plus
from tests.conftest import PARITY, REPO, run_cli
from utils.seg_data import ImageNetTrainTransform
from utils.seg_training import deeplab_v3plus_groups, poly_lr_min

SMALL = ["--label-dir", "SegmentationClassAug", "--no-progress", "--set", "MODEL.DEPTH=50",
         "--set", "MODEL.PRETRAINED=false", "--set", "SOLVER.BATCH_SIZE=2", "--set", "SOLVER.NUM_WORKERS=0",
         "--set", "DATASET.CROP_SIZE=65", "--set", "SOLVER.ITER_MAX=2", "--set", "SOLVER.ITER_SAVE=2"]


def test_label_padding_is_ignore_and_image_padding_is_black():
    image = np.full((20, 30, 3), 120.0, dtype=np.float32)
    label = np.full((20, 30), 4, dtype=np.uint8)
    torch.manual_seed(0)
    out_image, out_label = ImageNetTrainTransform((1.0, 1.0), 41)(image, label)
    assert out_image.shape == (3, 41, 41) and out_label.shape == (41, 41)
    padded = out_label == 255
    assert padded.sum() == 41 * 41 - 20 * 30 and set(out_label[~padded].tolist()) == {4}
    black = (torch.zeros(3) - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(out_image[:, padded], black[:, None].expand(3, int(padded.sum())))


def test_poly_lr_with_floor_matches_original():
    expected = json.loads((PARITY / "expected" / "H_lr_schedules.json").read_text())["deeplabv3plus_train"]
    groups = deeplab_v3plus_groups(DeepLabV3Plus(depth=50), 0.05, 0.1, 1e-4)
    for index, lrs in enumerate(expected["lr"]):
        for group, lr in zip(groups, lrs, strict=True):
            assert math.isclose(poly_lr_min(group["base_lr"], index, 20000, 0.9, 1e-6), lr, rel_tol=1e-12)
    assert poly_lr_min(0.05, 20000, 20000) == 1e-6


def test_cpu_training_skips_amp_and_writes_the_final_checkpoint(parity_voc, tmp_path):
    out = tmp_path / "v3p"
    result = run_cli("DeepLabV3Plus-Pytorch/main.py", "--voc-root", parity_voc, "--out-dir", out, *SMALL)
    assert "AMP (bf16) is CUDA-only" in result.stdout
    final = torch.load(out / "checkpoint_final.pth", weights_only=True)
    assert final["kind"] == "deeplab_v3plus" and final["iteration"] == 2
    model = DeepLabV3Plus(**final["model_args"])
    model.load_state_dict(final["model"])  # strict


def test_two_process_torchrun_with_synchronised_bn(parity_voc, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "DeepLabV3Plus-Pytorch/main.py", "--voc-root", str(parity_voc), "--out-dir", str(out), *SMALL]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 2 process(es), cpu, synchronised BN" in result.stdout
    state = torch.load(out / "checkpoint_final.pth", weights_only=True)["model"]
    assert "backbone.bn1.running_mean" in state  # plain BatchNorm keys: loadable without torchrun
