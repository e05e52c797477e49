"""The demo's mechanism, measured end to end with the demo recipe (the slowest test: several CPU minutes).

On the synthetic data (generator version 4), a plain classifier's CAM must sit more on the discriminative part
than on the body, and the learnable DRS must train, move its maps towards the body (a higher body/part ratio,
the map rising more on the body than on the background) and give better labels with the paper's protocol
(α and saliency). How large the gain is, over three seeds and with the saliency-free CAM protocol too, is
reported by run.sh (docs/demo.md), not asserted.
"""

import json

from tests.conftest import run_cli

SIZE = ["--size", "160", "--scales", "128", "160", "192"]


def region_scores(voc_root, checkpoint, out):
    run_cli("evaluate_maps.py", "--voc-root", voc_root, "--list", voc_root / "lists" / "val_cls.txt",
            "--checkpoint", checkpoint, "--out", out, "--num-workers", "0", *SIZE)
    return json.loads((out / "scores.json").read_text())


def test_drs_moves_cams_from_parts_to_bodies(tmp_path):
    pretrain_root, demo_root = tmp_path / "pretrain" / "VOC2012", tmp_path / "demo" / "VOC2012"
    run_cli("-m", "utils.demo.data", "--out", pretrain_root, "--seed", "1")
    run_cli("-m", "utils.demo.data", "--out", demo_root)
    # no in-training validation: it only logs, and the classifier has no dropout and its data order and
    # augmentation have their own seeds, so the trained weights are run.sh's
    common = ["--no-progress", "--set", "val.every=0"]
    run_cli("train_cls.py", "--config", "configs/cls_demo_pretrain.yaml", "--voc-root", pretrain_root,
            "--out", tmp_path / "pre", *common)
    results = {}
    for variant in ("relu", "learnable"):
        run_cli("train_cls.py", "--config", "configs/cls_demo.yaml", "--voc-root", demo_root,
                "--out", tmp_path / variant, "--set", f"model.drs={variant}",
                "--set", f"model.init_from={tmp_path / 'pre' / 'last.pth'}", *common)
        results[variant] = region_scores(demo_root, tmp_path / variant / "last.pth", tmp_path / f"eval_{variant}")
    plain, drs = results["relu"], results["learnable"]
    # both classifiers work (the ratios below are not those of flat, untrained maps; an untrained one is near 0.3).
    # The trained values move with the machine's float rounding (measured: 0.93 / 0.91 on version 4).
    assert plain["classification"]["mAP"] > 0.8 and drs["classification"]["mAP"] > 0.8
    assert plain["regions"]["part"] > plain["regions"]["body"]
    assert drs["regions"]["body_part_ratio"] > plain["regions"]["body_part_ratio"]
    assert drs["regions"]["background"] < 0.5 * drs["regions"]["part"]  # spread, not flat
    body_gain = drs["regions"]["body"] - plain["regions"]["body"]
    assert body_gain > drs["regions"]["background"] - plain["regions"]["background"]
    # measured 69.2 vs 64.9 (seeds 1-4 of run.sh: +6.4, +2.1, +4.9, +7.1)
    assert drs["drs_protocol"]["mean_iou"] > plain["drs_protocol"]["mean_iou"]
