"""DeepLab-V3+ evaluation (eval.py) against parity fixture F, full images and crop_val; errors."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PARITY, run_cli
from utils.metrics import ConfusionMatrix

EXPECTED = PARITY / "expected" / "F_deeplabv3plus_s0"
IDS = ("pv03_chelsea", "pv05_motorbike")
MAX_LABEL_DIFF = 0.005  # fraction of pixels (parity README, section 5)
# protocol -> (extra flags, stored logit subsample, its pixel step)
PROTOCOLS = {
    "full": ((), "logits_every8th_pixel.npz", 8),
    "crop_val": (("--crop-val",), "logits_every4th_pixel.npz", 4),
}
# (top, left) of the 513 centre crop after the shorter side is resized to 513 (parity README, fixture F)
CROP_OFFSETS = {"pv03_chelsea": (0, 85), "pv05_motorbike": (0, 124)}


def run_eval(voc_root, checkpoint, out, *flags, check=True):
    return run_cli("DeepLabV3Plus-Pytorch/eval.py", "--voc-root", voc_root, "--list",
                   voc_root / "ImageSets" / "Segmentation" / "val.txt", "--checkpoint", checkpoint, "--out", out,
                   "--jobs", "2", *flags, check=check)


def read_png(path):
    return np.array(Image.open(path))


def reference_gt(voc_root, image_id, protocol):
    """The GT the original scores against, derived here independently of utils.seg.evaluation."""
    gt = Image.open(voc_root / "SegmentationClass" / f"{image_id}.png")
    if protocol == "crop_val":
        width, height = gt.size
        short = min(width, height)
        gt = gt.resize((int(513 * width / short), int(513 * height / short)), Image.NEAREST)
        top, left = CROP_OFFSETS[image_id]
        gt = gt.crop((left, top, left + 513, top + 513))
    return np.array(gt)


def assert_matches_fixture(out, protocol):
    _, logit_file, step = PROTOCOLS[protocol]
    expected_logits = np.load(EXPECTED / protocol / logit_file)
    for image_id in IDS:
        expected_label = EXPECTED / protocol / "label" / f"{image_id}.png"
        expected_crf = EXPECTED / protocol / "crf_label" / f"{image_id}.png"
        logit = np.load(out / "logit" / f"{image_id}.npy")
        assert logit.dtype == np.float16 and logit.shape == (21, *read_png(expected_label).shape)
        np.testing.assert_allclose(logit[:, ::step, ::step].astype(np.float32),
                                   expected_logits[image_id].astype(np.float32), rtol=2e-3, atol=2e-3)
        for ours, expected in ((out / f"{image_id}.png", expected_label),
                               (out / "crf" / f"{image_id}.png", expected_crf)):
            assert np.mean(read_png(ours) != read_png(expected)) < MAX_LABEL_DIFF, ours


def assert_scored_against(out, voc_root, protocol):
    """scores*.json are exactly our label files scored against the (cropped) GT."""
    for name, label_dir in (("scores", out), ("scores_crf", out / "crf")):
        matrix = ConfusionMatrix()
        for image_id in IDS:
            matrix.update(reference_gt(voc_root, image_id, protocol), read_png(label_dir / f"{image_id}.png"))
        ours = json.loads((out / f"{name}.json").read_text())
        assert json.dumps(ours, sort_keys=True) == json.dumps(matrix.scores(), sort_keys=True), name  # NaN-safe


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_eval_matches_original(protocol, parity_weights, parity_voc, tmp_path):
    out = tmp_path / "eval"
    flags = PROTOCOLS[protocol][0]
    result = run_eval(parity_voc, parity_weights("deeplabv3plus_resnet101"), out, *flags)
    assert "with CRF" in result.stdout.splitlines()[-1]
    assert_matches_fixture(out, protocol)
    assert_scored_against(out, parity_voc, protocol)
    assert "mIoU over GT classes" in (out / "scores.md").read_text()

    # the kept logits of one protocol must not be scored under the other
    other = () if flags else ("--crop-val",)
    mixed = run_eval(parity_voc, parity_weights("deeplabv3plus_resnet101"), out, *other, check=False)
    assert mixed.returncode != 0 and mixed.stderr.strip().startswith("error:") and "another --out" in mixed.stderr


def test_deeplab_v2_checkpoint_is_a_clear_error(parity_weights, parity_voc, tmp_path):
    result = run_eval(parity_voc, parity_weights("deeplabv2_msc"), tmp_path / "eval", check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "not a DeepLab-V3+ checkpoint" in lines[0] and "DeepLab-V2" in lines[0]
