"""The demo's claim, measured end to end with the demo recipe (the slowest test: a few CPU minutes).

Not a leaderboard: on the synthetic data, a plain classifier's CAM must sit more on the discriminative part
than on the body, and DRS must move it towards the body (a higher body/part ratio). Whether DRS also wins on
mIoU is reported by run.sh, not asserted.
"""

import json

from tests.conftest import run_cli

SIZE = ["--size", "112", "--scales", "96", "112", "128"]


def region_scores(voc_root, checkpoint, out):
    run_cli("evaluate_maps.py", "--voc-root", voc_root, "--list", voc_root / "lists" / "val_cls.txt",
            "--checkpoint", checkpoint, "--out", out, "--num-workers", "0", *SIZE)
    return json.loads((out / "scores.json").read_text())


def test_drs_moves_cams_from_parts_to_bodies(tmp_path):
    pretrain_root, demo_root = tmp_path / "pretrain" / "VOC2012", tmp_path / "demo" / "VOC2012"
    run_cli("-m", "utils.demo_data", "--out", pretrain_root, "--seed", "1")
    run_cli("-m", "utils.demo_data", "--out", demo_root)
    common = ["--no-progress", "--set", "val.every=0"]
    run_cli("train_cls.py", "--config", "configs/cls_demo_pretrain.yaml", "--voc-root", pretrain_root,
            "--out-dir", tmp_path / "pre", *common)
    results = {}
    for variant in ("relu", "0.9"):
        run_cli("train_cls.py", "--config", "configs/cls_demo.yaml", "--voc-root", demo_root,
                "--out-dir", tmp_path / variant, "--set", f"model.drs={variant}",
                "--set", f"model.init_from={tmp_path / 'pre' / 'last.pth'}", *common)
        results[variant] = region_scores(demo_root, tmp_path / variant / "last.pth", tmp_path / f"eval_{variant}")
    plain, drs = results["relu"], results["0.9"]
    # both classifiers work (the ratios below are not those of flat, untrained maps)
    assert plain["classification"]["mAP"] > 0.85 and drs["classification"]["mAP"] > 0.85
    assert plain["regions"]["part"] > plain["regions"]["body"]
    assert drs["regions"]["body_part_ratio"] > plain["regions"]["body_part_ratio"]
