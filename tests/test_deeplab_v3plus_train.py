"""DeepLab-V3+ training: label padding with 255, AMP skipped on the CPU, synchronised BN under torchrun."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

from models.deeplab_v3plus import DeepLabV3Plus, ResNetFeatures
from tests.conftest import PARITY, REPO, run_cli
from utils.seg.data import ImageNetTrainTransform
from utils.seg.training import deeplab_v3plus_groups, poly_lr_min

SMALL = ["--labels", "SegmentationClassAug", "--no-progress", "--set", "model.depth=50",
         "--set", "model.stem_channels=16", "--set", "model.pretrained=false", "--set", "train.batch_size=2",
         "--set", "data.num_workers=0",
         "--set", "data.crop_size=65", "--set", "train.iterations=2", "--set", "train.save_every=2"]


@pytest.mark.parametrize("output_stride,dilate", [(16, [False, False, True]), (8, [False, True, True])])
def test_backbone_at_width_64_is_torchvisions_resnet(output_stride, dilate):
    reference = torchvision.models.resnet50(replace_stride_with_dilation=dilate).eval()
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    ours = ResNetFeatures(50, output_stride).eval()
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in state.items()]
    ours.load_state_dict(state, strict=True)
    x = torch.randn(1, 3, 65, 65)
    with torch.no_grad():
        low, high = ours(x)
        stem = reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))
        expected_low = reference.layer1(stem)
        expected_high = reference.layer4(reference.layer3(reference.layer2(expected_low)))
    torch.testing.assert_close(low, expected_low, rtol=0, atol=0)
    torch.testing.assert_close(high, expected_high, rtol=0, atol=0)
    assert high.shape[-1] == math.ceil(65 / output_stride)


def test_small_model_scales_every_channel_and_block_count():
    model = DeepLabV3Plus(num_classes=5, depth=50, stem_channels=8, head_channels=32, project_channels=6,
                          n_blocks=[1, 2, 1, 1])
    assert model.backbone.conv1.out_channels == 8 and model.backbone.layer4[-1].conv3.out_channels == 256
    assert [len(getattr(model.backbone, f"layer{i}")) for i in (1, 2, 3, 4)] == [1, 2, 1, 1]
    assert model.classifier.project[0].in_channels == 32 and model.classifier.project[0].out_channels == 6
    assert model.classifier.aspp.project[0].in_channels == 5 * 32
    assert model.classifier.classifier[0].in_channels == 32 + 6
    assert model(torch.randn(2, 3, 33, 33)).shape == (2, 5, 33, 33)
    with pytest.raises(ValueError, match="stem_channels 64"):
        ResNetFeatures(50, weights="IMAGENET1K_V1", stem_channels=16)
    with pytest.raises(ValueError, match="blocks"):
        ResNetFeatures(50, weights="IMAGENET1K_V1", n_blocks=[1, 1, 1, 1])


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


def test_cpu_training_of_the_demo_config_skips_amp_and_writes_the_final_checkpoint(parity_voc, tmp_path):
    out = tmp_path / "v3p"
    result = run_cli("DeepLabV3Plus-Pytorch/main.py", "--config", "DeepLabV3Plus-Pytorch/configs/demo.yaml",
                     "--voc-root", parity_voc, "--out", out, *SMALL)
    assert "AMP (bf16) is CUDA-only" in result.stdout
    final = torch.load(out / "checkpoint_final.pth", weights_only=True)
    assert final["kind"] == "deeplab_v3plus" and final["iteration"] == 2
    model = DeepLabV3Plus(**final["model_args"])
    model.load_state_dict(final["model"])  # strict
    assert final["model_args"]["stem_channels"] == 16 and model.backbone.conv1.out_channels == 16
    assert (out / "config.yaml").is_file()


def test_two_process_torchrun_with_synchronised_bn(parity_voc, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "DeepLabV3Plus-Pytorch/main.py", "--voc-root", str(parity_voc), "--out", str(out), *SMALL]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "on 2 process(es), cpu, synchronised BN" in result.stdout
    state = torch.load(out / "checkpoint_final.pth", weights_only=True)["model"]
    assert "backbone.bn1.running_mean" in state  # plain BatchNorm keys: loadable without torchrun


def test_imagenet_weights_for_a_narrow_network_are_a_one_line_error(parity_voc, tmp_path):
    result = run_cli("DeepLabV3Plus-Pytorch/main.py", "--voc-root", parity_voc, "--out", tmp_path / "out", *SMALL,
                     "--set", "model.pretrained=true", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "model.pretrained needs the ImageNet ResNet's shape" in result.stderr + result.stdout
