"""DeepLab-V2 evaluation (eval.py) against parity fixture E: logits, labels, CRF labels, scores; resume; errors."""

import json

import numpy as np
from PIL import Image

from tests.conftest import PARITY, run_cli

EXPECTED = PARITY / "expected" / "E_deeplabv2_s0"
IDS = ("pv03_chelsea", "pv05_motorbike")
MAX_LABEL_DIFF = 0.005  # fraction of pixels (parity README, section 5)


def run_eval(parity_voc, checkpoint, out, check=True):
    return run_cli("DeepLab-V2-PyTorch/eval.py", "--voc-root", parity_voc, "--list",
                   parity_voc / "lists" / "val_cls.txt", "--checkpoint", checkpoint, "--out", out, "--jobs", "2",
                   check=check)


def read_png(path):
    return np.array(Image.open(path))


def assert_matches_fixture(out):
    for image_id in IDS:
        ours = np.load(out / "logit" / f"{image_id}.npy")
        expected = np.load(EXPECTED / "logit" / f"{image_id}.npy")
        assert ours.dtype == np.float32 and ours.shape == expected.shape
        np.testing.assert_allclose(ours, expected, rtol=0, atol=2e-4)
        for ours_png, expected_png in ((out / f"{image_id}.png", EXPECTED / "label" / f"{image_id}.png"),
                                       (out / "crf" / f"{image_id}.png", EXPECTED / "crf_label" / f"{image_id}.png")):
            assert np.mean(read_png(ours_png) != read_png(expected_png)) < MAX_LABEL_DIFF, ours_png
    for name in ("scores", "scores_crf"):
        expected = json.loads((EXPECTED / f"{name}.json").read_text())  # NaN literals: json.loads accepts them
        ours = json.loads((out / f"{name}.json").read_text())
        # the original's "Mean IoU" is DeepLab-V2's mean over GT-present classes
        assert abs(ours["mean_iou_gt_classes"] - expected["Mean IoU"]) < 1e-12, name
    assert "mIoU over GT classes" in (out / "scores.md").read_text()


def test_eval_matches_original_and_resumes(parity_weights, parity_voc, tmp_path):
    checkpoint, out = parity_weights("deeplabv2_msc"), tmp_path / "eval"
    result = run_eval(parity_voc, checkpoint, out)
    assert "with CRF" in result.stdout.splitlines()[-1]
    assert_matches_fixture(out)

    # resume: the first image's logit and CRF label are deleted; only they are recomputed
    kept = [out / "logit" / f"{IDS[1]}.npy", out / "crf" / f"{IDS[1]}.png"]
    kept_mtimes = [p.stat().st_mtime_ns for p in kept]
    (out / "logit" / f"{IDS[0]}.npy").unlink()
    (out / "crf" / f"{IDS[0]}.png").unlink()
    run_eval(parity_voc, checkpoint, out)
    assert [p.stat().st_mtime_ns for p in kept] == kept_mtimes
    assert_matches_fixture(out)


def test_classifier_checkpoint_is_a_clear_error(parity_weights, parity_voc, tmp_path):
    result = run_eval(parity_voc, parity_weights("drs_cls_learnable"), tmp_path / "eval", check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "not a DeepLab-V2 checkpoint" in lines[0]
