"""The CUDA paths: skipped without a GPU (CI has none); `bash bench/gpu_checks.sh` runs them with the benchmarks.

Model outputs on the GPU are compared with the CPU's in strict float32 (TF32 off). The map and evaluation tools
turn TF32 off themselves (utils.distributed.inference_device) and are held to the parity fixtures with the CPU's
tolerances; training runs with PyTorch's defaults (docs/testing.md has what an H200 measured)."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from models.classifier import DRSClassifier
from models.deeplab_v2 import deeplab_v2_msc
from models.deeplab_v3plus import DeepLabV3Plus
from models.refine import RefineNet
from tests.conftest import PARITY, run_cli
from tests.test_deeplab_v2_train import SMALL as V2_SMALL
from tests.test_deeplab_v3plus_train import SMALL as V3P_SMALL
from utils import checkpoints

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

MODELS = {
    "classifier_learnable_drs": lambda: DRSClassifier(drs="learnable", width=0.25),
    "classifier_fixed_drs": lambda: DRSClassifier(drs=0.55, width=0.25),
    "refine": lambda: RefineNet(width=0.25),
    "deeplab_v2_msc": lambda: deeplab_v2_msc(n_blocks=(1, 1, 1, 1), width=0.25),
    "deeplab_v3plus": lambda: DeepLabV3Plus(depth=50, stem_channels=16, head_channels=64, project_channels=16),
}


@pytest.fixture()
def strict_fp32():
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("name", MODELS)
def test_models_on_cuda_match_the_cpu(name, strict_fp32):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    x = torch.randn(2, 3, 97, 97)
    with torch.no_grad():
        expected = model(x)
        got = model.cuda()(x.cuda()).cpu()
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * max(scale, 1.0))


def test_localization_maps_on_cuda_match_the_original(parity_weights, parity_voc, tmp_path):
    out = tmp_path / "maps"
    run_cli("make_localization_maps.py", "--voc-root", parity_voc, "--list", parity_voc / "lists" / "train_aug_cls.txt",
            "--checkpoint", parity_weights("drs_cls_learnable"), "--out", out, "--num-workers", "0", "--device", "cuda")
    expected = np.load(PARITY / "expected" / "B_localization_maps_s0.npz")
    worst = []
    for image_id in expected.files:
        diff = np.abs(np.load(out / f"{image_id}.npy").astype(int) - expected[image_id].astype(int))
        print(f"{image_id}: max {diff.max()}, differing {(diff > 0).mean():.5f}")
        worst.append((diff.max(), (diff > 0).mean()))
    assert max(m for m, _ in worst) <= 1 and max(f for _, f in worst) <= 0.005  # as on the CPU


def run_deeplab_eval(script, voc_root, checkpoint, out, *flags):
    return run_cli(script, "--voc-root", voc_root, "--list", voc_root / "ImageSets" / "Segmentation" / "val.txt",
                   "--checkpoint", checkpoint, "--out", out, "--jobs", "4", "--device", "cuda", *flags)


def label_disagreement(ours, expected):
    return float(np.mean(np.array(Image.open(ours)) != np.array(Image.open(expected))))


@pytest.mark.parametrize("script, spec, fixture, protocol", [
    ("DeepLab-V2-PyTorch/eval.py", "deeplabv2_msc", "E_deeplabv2_s0", None),
    ("DeepLabV3Plus-Pytorch/eval.py", "deeplabv3plus_resnet101", "F_deeplabv3plus_s0/full", None),
    ("DeepLabV3Plus-Pytorch/eval.py", "deeplabv3plus_resnet101", "F_deeplabv3plus_s0/crop_val", "--crop-val"),
])
def test_segmentation_eval_on_cuda_matches_the_original(script, spec, fixture, protocol, parity_weights, parity_voc,
                                                        tmp_path):
    pytest.importorskip("pydensecrf")
    out = tmp_path / "eval"
    run_deeplab_eval(script, parity_voc, parity_weights(spec), out, *([protocol] if protocol else []))
    expected = PARITY / "expected" / fixture
    for image_id in ("pv03_chelsea", "pv05_motorbike"):
        plain = label_disagreement(out / f"{image_id}.png", expected / "label" / f"{image_id}.png")
        crf = label_disagreement(out / "crf" / f"{image_id}.png", expected / "crf_label" / f"{image_id}.png")
        print(f"{fixture} {image_id}: labels differ on {plain:.5f} of pixels, CRF labels on {crf:.5f}")
        assert plain < 0.005 and crf < 0.005
    assert math.isfinite(json.loads((out / "scores.json").read_text())["mean_iou"])


# the CPU tests' small networks, trained a little longer so that the loss can be seen to fall
V3P_ARGS = [*V3P_SMALL, "--device", "cuda", "--set", "train.batch_size=4", "--set", "data.num_workers=2",
            "--set", "data.crop_size=129", "--set", "train.iterations=20", "--set", "train.save_every=20",
            "--set", "output.log_every=1"]


@pytest.mark.parametrize("amp", ["bf16", "fp16", "null"])
def test_deeplab_v3plus_trains_on_cuda_with_amp(amp, parity_voc, tmp_path):
    out = tmp_path / "v3p"
    result = run_cli("DeepLabV3Plus-Pytorch/main.py", "--config", "DeepLabV3Plus-Pytorch/configs/demo.yaml",
                     "--voc-root", parity_voc, "--out", out, *V3P_ARGS, "--set", f"train.amp={amp}")
    assert "CUDA-only" not in result.stdout and "cuda" in result.stdout
    losses = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()
              if json.loads(line).get("event") == "train"]
    print(f"AMP {amp}: losses {losses[0]:.3f} ... {losses[-1]:.3f}")
    assert len(losses) == 20 and all(math.isfinite(loss) for loss in losses)
    assert np.mean(losses[-5:]) < losses[0]
    final = torch.load(out / "checkpoint_final.pth", weights_only=True)  # loads where there is no GPU too
    assert all(v.device.type == "cpu" and (not v.is_floating_point() or v.dtype == torch.float32)
               for v in final["model"].values())
    model, _ = checkpoints.load_deeplab_v3plus(out / "checkpoint_final.pth")
    assert model.eval()(torch.randn(1, 3, 65, 65)).shape == (1, 21, 65, 65)


def test_deeplab_v2_and_classifier_train_on_cuda(parity_voc, tmp_path):
    run_cli("DeepLab-V2-PyTorch/train.py", "--voc-root", parity_voc, "--out", tmp_path / "v2", "--device", "cuda",
            *V2_SMALL, "--set", "train.iterations=3", "--set", "train.save_every=3")
    assert torch.load(tmp_path / "v2" / "checkpoint_final.pth", weights_only=True)["iteration"] == 3
    result = run_cli("train_cls.py", "--config", "configs/cls_demo.yaml", "--voc-root", parity_voc,
                     "--out", tmp_path / "cls", "--device", "cuda", "--no-progress", "--set", "data.num_workers=0",
                     "--set", "train.epochs=1")
    assert "cuda" in result.stdout
    model, args = checkpoints.load_classifier(tmp_path / "cls" / "last.pth")
    assert args["drs"] == "learnable" and next(model.parameters()).device.type == "cpu"
